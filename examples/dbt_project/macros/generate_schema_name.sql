{# Use the configured schema name as is (staging, marts, reference) instead of dbt's default
   "<target schema>_<custom schema>", so later steps can query e.g. marts.mart_product_sales. #}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}{{ target.schema }}{%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
