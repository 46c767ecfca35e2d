-- Per product: how often it was carted, bought and returned, and the revenue it kept.
with purchases as (
    select * from {{ ref('stg_purchases') }}
)

select
    p.product_id,
    p.make,
    p.model,
    coalesce(s.segment, 'unknown') as segment,
    p.price,
    count(u.purchase_id) as carted,
    count(u.purchase_id) filter (where u.purchase_status in ('purchased', 'returned')) as purchased,
    count(u.purchase_id) filter (where u.purchase_status = 'returned') as returned,
    coalesce(sum(p.price) filter (where u.purchase_status = 'purchased'), 0) as net_revenue
from {{ ref('stg_products') }} as p
left join purchases as u on u.product_id = p.product_id
left join {{ ref('make_segments') }} as s on s.make = p.make
group by all
