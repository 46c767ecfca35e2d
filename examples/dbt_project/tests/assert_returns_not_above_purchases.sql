-- A product cannot be returned more often than it was bought.
select product_id, purchased, returned
from {{ ref('mart_product_sales') }}
where returned > purchased or net_revenue < 0
