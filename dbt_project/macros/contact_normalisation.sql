{#- Emails compare lower-cased without surrounding blanks: the systems type them by hand. -#}
{% macro normalize_email(email) -%}
    lower(trim({{ email }}))
{%- endmacro %}

{#- One '@' with a non-empty local part and a dotted domain, no blanks inside. Placeholders such as
    'n/a', '' or 'name@' fail, so they never link two people in identity resolution. -#}
{% macro is_valid_email(email) -%}
    coalesce({{ matches_pattern(normalize_email(email), '^[^@ ]+@[^@ ]+[.][^@ .]+$') }}, false)
{%- endmacro %}

{#- A phone is usable when it holds only digits and the usual separators, starts with an international
    prefix ('+' or '00'), and has 8 to 15 digits (the E.164 maximum) after it. A national number is
    not: the CRM's country is where the contact lives, not where the number is from. -#}
{% macro is_valid_phone(phone) -%}
    coalesce(
        {{ matches_pattern('trim(' ~ phone ~ ')', '^([+]|00)[0-9 ()./-]+$') }}
        and length({{ international_digits(phone) }}) between 8 and 15,
        false)
{%- endmacro %}

{#- The digits after the international prefix: country code then subscriber number. -#}
{% macro international_digits(phone) -%}
    case
        when trim({{ phone }}) like '00%' then substr({{ digits_only(phone) }}, 3)
        else {{ digits_only(phone) }}
    end
{%- endmacro %}

{#- E.164 digits (country code first, no '+') of a valid phone, else null. -#}
{% macro normalize_phone(phone) -%}
    case when {{ is_valid_phone(phone) }} then {{ international_digits(phone) }} end
{%- endmacro %}
