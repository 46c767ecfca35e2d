-- Per user: purchases, returns, spend, and whether they count as a loyal customer.
select
    u.user_id,
    u.name,
    u.age,
    u.gender,
    u.country_code,
    count(p.purchase_id) filter (where p.purchase_status in ('purchased', 'returned')) as purchases,
    count(p.purchase_id) filter (where p.purchase_status = 'returned') as returns,
    coalesce(sum(pr.price) filter (where p.purchase_status = 'purchased'), 0) as total_spent,
    count(p.purchase_id) filter (where p.purchase_status = 'purchased')
        >= {{ var('min_purchases_for_loyal') }} as is_loyal,
    min(p.purchased_at) as first_purchase_at,
    max(p.purchased_at) as last_purchase_at
from {{ ref('stg_users') }} as u
left join {{ ref('stg_purchases') }} as p on p.user_id = u.user_id
left join {{ ref('stg_products') }} as pr on pr.product_id = p.product_id
group by all
