select
    id as purchase_id,
    user_id,
    product_id,
    added_to_cart_at,
    purchased_at,
    returned_at,
    case
        when returned_at is not null then 'returned'
        when purchased_at is not null then 'purchased'
        else 'in_cart'
    end as purchase_status
from {{ source('faker', 'purchases') }}
