"""The hidden world behind the simulated sources: personas, catalogue, planted product rules,
the churn model and campaign uplift. Everything here is truth the pipeline must rediscover.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

CATEGORIES: dict[str, list[str]] = {
    "grocery": ["dairy", "bakery", "produce", "pantry"],
    "household": ["cleaning", "paper", "laundry"],
    "beauty": ["skin", "hair", "fragrance"],
    "electronics": ["audio", "accessories", "smart_home"],
    "home": ["kitchen", "decor", "bedding"],
    "sports": ["outdoor", "fitness", "cycling"],
    "fashion": ["shoes", "outerwear", "basics"],
    "toys": ["games", "outdoor_toys", "learning"],
}
CATEGORY_NAMES = list(CATEGORIES)
CHANNELS = ["web", "store", "phone"]
PRODUCTS_PER_CATEGORY = 40


@dataclass(frozen=True)
class Persona:
    name: str
    share: float
    orders_per_day: float
    extra_items: float  # mean items beyond the first in a basket (Poisson)
    discount_share: float  # share of lines bought on discount
    return_rate: float
    channel_weights: tuple[float, float, float]  # web, store, phone
    category_weights: tuple[float, ...]  # over CATEGORY_NAMES
    churn_hazard: float  # daily baseline hazard
    drift_days: float  # engagement halves every drift_days days (0: no drift)
    tickets_per_day: float
    interactions_per_day: float
    campaign_base_conversion: float
    campaign_uplift: float  # added conversion probability when treated


PERSONAS: tuple[Persona, ...] = (
    Persona("champions", 0.10, 0.060, 3.0, 0.10, 0.02, (0.6, 0.3, 0.1), (3, 2, 2, 2, 2, 2, 2, 1), 0.0002, 0, 0.004, 0.010, 0.10, 0.05),
    Persona("loyal_regulars", 0.22, 0.030, 2.0, 0.15, 0.03, (0.4, 0.5, 0.1), (5, 3, 1, 1, 1, 1, 1, 1), 0.0003, 0, 0.003, 0.006, 0.06, 0.06),
    Persona("occasional_big_spenders", 0.12, 0.008, 4.0, 0.05, 0.05, (0.7, 0.2, 0.1), (1, 1, 2, 5, 4, 2, 3, 1), 0.0006, 0, 0.003, 0.004, 0.03, 0.04),
    Persona("bargain_hunters", 0.20, 0.020, 2.5, 0.60, 0.06, (0.8, 0.15, 0.05), (4, 3, 2, 1, 1, 1, 2, 2), 0.0010, 0, 0.004, 0.002, 0.08, 0.12),
    Persona("drifting_away", 0.16, 0.025, 1.5, 0.20, 0.05, (0.5, 0.4, 0.1), (3, 2, 1, 1, 2, 2, 1, 1), 0.0015, 90, 0.006, 0.003, 0.04, 0.02),
    Persona("one_time_buyers", 0.20, 0.003, 1.0, 0.20, 0.08, (0.6, 0.3, 0.1), (2, 1, 2, 2, 1, 1, 2, 2), 0.0025, 0, 0.002, 0.001, 0.02, 0.01),
)
PERSONA_NAMES = [persona.name for persona in PERSONAS]

# Daily churn hazard = persona baseline × exp(sum of effect × factor); the factors and effect
# sizes are stated in truth/churn_model.json.
CHURN_EFFECTS = {
    "lost_engagement": 2.0,  # 1 - engagement (0 while engaged, towards 1 as a drifter fades)
    "bad_service_experiences": 0.7,  # per slow, unresolved or badly rated ticket (last 90 days)
    "price_sensitivity": 1.0,  # 0..1, drawn per customer
}
BAD_SERVICE_MEMORY_DAYS = 90


@dataclass(frozen=True)
class PlantedRule:
    """A → B planted in baskets: A appears with probability p_a; B with p_b_given_a when A is in
    the basket, with p_b_without_a otherwise. Rule products are outside the regular catalogue
    draws, so support, confidence and lift follow exactly from these three numbers."""

    antecedent: str
    consequent: str
    p_a: float
    p_b_given_a: float
    p_b_without_a: float

    @property
    def support(self) -> float:
        return self.p_a * self.p_b_given_a

    @property
    def confidence(self) -> float:
        return self.p_b_given_a

    @property
    def consequent_support(self) -> float:
        return self.p_a * self.p_b_given_a + (1 - self.p_a) * self.p_b_without_a

    @property
    def lift(self) -> float:
        return self.confidence / self.consequent_support


_RULE_SHAPES = [(0.06, 0.60, 0.02), (0.05, 0.45, 0.03), (0.04, 0.70, 0.01), (0.03, 0.50, 0.02), (0.025, 0.40, 0.01)]


@dataclass(frozen=True)
class World:
    products: pd.DataFrame  # sku, name, category, subcategory, list_price, unit_cost, popularity
    rules: tuple[PlantedRule, ...]
    regular_skus_by_category: dict[str, np.ndarray]
    cumulative_popularity_by_category: dict[str, np.ndarray]

    def persona_table(self) -> pd.DataFrame:
        table = pd.DataFrame([asdict(persona) for persona in PERSONAS])
        table["channel_weights"] = table["channel_weights"].map(lambda w: " ".join(f"{x:g}" for x in w))
        table["category_weights"] = table["category_weights"].map(lambda w: " ".join(f"{x:g}" for x in w))
        return table

    def rules_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "antecedent": rule.antecedent,
                    "consequent": rule.consequent,
                    "support": round(rule.support, 6),
                    "confidence": round(rule.confidence, 6),
                    "lift": round(rule.lift, 6),
                    "antecedent_support": rule.p_a,
                    "consequent_support": round(rule.consequent_support, 6),
                }
                for rule in self.rules
            ]
        )


def build_world(seed: int) -> World:
    """The catalogue (long-tail popularity per category) and the planted rules, from the seed."""
    rng = np.random.default_rng([seed, 1_000_001])
    rows = []
    for category_index, category in enumerate(CATEGORY_NAMES):
        level = rng.uniform(1.8, 3.8)
        for index in range(PRODUCTS_PER_CATEGORY):
            subcategory = CATEGORIES[category][index % len(CATEGORIES[category])]
            price = round(float(np.exp(rng.normal(level, 0.5))), 2)
            rows.append(
                {
                    "sku": f"SKU-{category_index + 1:02d}{index + 1:03d}",
                    "name": f"{subcategory.replace('_', ' ').title()} {category_index + 1:02d}{index + 1:03d}",
                    "category": category,
                    "subcategory": subcategory,
                    "list_price": price,
                    "unit_cost": round(price * float(rng.uniform(0.45, 0.75)), 2),
                    # Zipf-like long tail: a few bestsellers, many rarely bought products.
                    "popularity": 1.0 / (index + 1) ** 1.1,
                }
            )
    products = pd.DataFrame(rows)
    # The last two products of each of the first categories are reserved for planted rules.
    rule_skus = []
    for category in CATEGORY_NAMES[: len(_RULE_SHAPES)]:
        skus = products.loc[products["category"] == category, "sku"].tolist()
        rule_skus.append((skus[-2], skus[-1]))
    rules = tuple(
        PlantedRule(antecedent, consequent, p_a, p_b, p_b0)
        for (antecedent, consequent), (p_a, p_b, p_b0) in zip(rule_skus, _RULE_SHAPES)
    )
    reserved = {sku for pair in rule_skus for sku in pair}
    regular = products[~products["sku"].isin(reserved)]
    skus_by_category, cumulative = {}, {}
    for category, group in regular.groupby("category", sort=False):
        weights = group["popularity"].to_numpy()
        skus_by_category[category] = group["sku"].to_numpy()
        cumulative[category] = np.cumsum(weights / weights.sum())
    return World(products, rules, skus_by_category, cumulative)
