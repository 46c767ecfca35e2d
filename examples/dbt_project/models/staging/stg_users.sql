select
    id as user_id,
    name,
    title,
    age,
    email,
    gender,
    academic_degree,
    nationality,
    occupation,
    try_cast(height as double) as height_m,
    weight as weight_kg,
    json_extract_string(address, '$.country_code') as country_code,
    json_extract_string(address, '$.city') as city,
    created_at,
    updated_at
from {{ source('faker', 'users') }}
