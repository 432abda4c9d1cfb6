-- Which products sell together? The strongest product rules of the latest mining: "baskets with
-- the antecedent also hold the consequent" (confidence), how much more often than by chance (lift),
-- in how many baskets the whole rule was seen. Rules seen in fewer than 10 baskets are left out:
-- their lift is mostly noise.
select
    antecedent,
    consequent,
    rule_baskets,
    round(cast(support as decimal(18, 6)), 5) as support,
    round(cast(confidence as decimal(18, 6)), 3) as confidence,
    round(cast(lift as decimal(18, 6)), 2) as lift
from bi.association_rules_latest
where item_level = 'product'
    and rule_baskets >= 10
order by lift desc, confidence desc, antecedent, consequent
limit 20
