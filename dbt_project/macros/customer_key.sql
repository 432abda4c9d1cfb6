{#- The key a new customer gets: the first 16 hex digits (64 bits) of the md5 of `text_expression`.
    The key is text in every table that holds a customer (about twenty, the largest a row per
    basket and product, order version or monthly snapshot), so its length is paid on every row: the
    whole md5's 32 digits made a table such as features.basket_items 13% larger (10,000 customers on
    PostgreSQL). Two different customers sharing a key takes, by the birthday bound, about 4 billion
    customers for even odds; at 10 million the odds are about 3 in a million. Keys are kept for
    life, so a warehouse keyed before this keeps its 32-digit keys beside the new ones. -#}
{% macro new_customer_key(text_expression) -%}
    left(md5({{ text_expression }}), 16)
{%- endmacro %}
