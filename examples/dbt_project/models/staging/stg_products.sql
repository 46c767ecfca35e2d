select
    id as product_id,
    make,
    model,
    year as model_year,
    cast(price as decimal(12, 2)) as price,
    created_at
from {{ source('faker', 'products') }}
