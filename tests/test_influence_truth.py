"""Acceptance on simulator truth: the referral influence score ranks the influence the simulator
planted. The shared `truth_history` (tests/conftest.py; its two years of referrals, the warehouse
built at the end): among customers who referred anyone, Spearman of `influence_score` with the
planted `influence` (truth/customers.csv) must reach 0.45. Referrals are sparse (most referrers
referred one or two people), which caps what any count can reach; beside it, the ceiling of a
perfect count: the planted influence against the number of referrals the simulator drew for each
referrer (what any score built from the network could at best rank by)."""

from __future__ import annotations

from scipy.stats import spearmanr

from ml_tasks import tasks
from tests.conftest import HISTORY_OUTCOME_DAY
from tests.truth import person_of_customer
from warehouse import connect

MINIMUM_SPEARMAN = 0.45


def test_influence_ranks_the_planted_influence_among_referrers(truth_history: dict) -> None:
    url = truth_history["at_outcome"]
    run = tasks.run_model("referral_influence", HISTORY_OUTCOME_DAY, "truth", warehouse_url=url)
    assert run["status"] == "published", run.get("message")
    with connect(url) as warehouse:
        influence = warehouse.fetch_df(
            "select customer_id, direct_referrals, influence_score from ml.customer_influence where as_of_date = ?",
            (HISTORY_OUTCOME_DAY,),
        )
    people = person_of_customer(url, truth_history["truth_at_outcome"])
    referrers = influence[influence["direct_referrals"] > 0].join(people[["influence", "crm_id"]], on="customer_id", how="inner")
    ours = spearmanr(referrers["influence_score"], referrers["influence"]).statistic
    drawn = people[people["referred_by"] != ""].groupby("referred_by").size()
    planted = people[people["crm_id"].isin(drawn.index)].drop_duplicates("crm_id")
    ceiling = spearmanr(drawn[planted["crm_id"]].to_numpy(), planted["influence"]).statistic
    print(f"\ninfluence on truth at {HISTORY_OUTCOME_DAY}: {len(referrers)} referrers; Spearman with the planted influence"
          f" {ours:.3f} (ceiling of the simulator's own referral counts {ceiling:.3f} over {len(planted)} referrers)")
    assert len(referrers) >= 100
    assert ours >= MINIMUM_SPEARMAN
