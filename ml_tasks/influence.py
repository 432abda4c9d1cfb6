"""Referral influence: who brought in whom through the CRM's referral network, how far each
customer's referrals reach, what the customers they brought in spend, and who the most influential
referrers are.

A pure module (`run(inputs, as_of_date, settings) -> (results, metrics)`, see ml_tasks.contract):
no warehouse, no Airflow, nothing random; the same edges in any row order give the same outputs.
Nothing is fitted: every figure is counted from the network known on the as-of date.

The network. A directed graph (networkx) with an edge from referrer to referred customer for each
row of features.customer_referrals. Before counting:
- an edge from a customer to itself is dropped (two CRM contacts of one person, one naming the
  other as referrer, merged into one customer: a self-merge, not a referral);
- a customer named as referred by several customers (several contacts merged, each naming its own
  referrer) keeps one referrer: the earliest referral_date, then the smallest referrer id. A
  customer was brought in once; and with one referrer each the network is a forest (plus cycles,
  below), whose trees are counted bottom-up in linear time.
Who is scored: every customer in the network (who referred anyone or was referred).

Per customer:
- direct_referrals: customers they referred (out-degree);
- referral_tree_size: every customer reached by following referrals down (descendants: referred,
  referred by those, ...), the customer excluded; referral_tree_revenue: those customers' net
  revenue (features.customer_features' `monetary`, all time to the as-of date; none for a
  customer without a feature row);
- referral_depth: the most referral steps from the customer down to any descendant (0: referred
  no one);
- pagerank: PageRank (damping `pagerank_alpha`) on the graph with its edges reversed, so rank
  flows from each referred customer to their referrer. In that graph a referred customer has one
  edge, to its referrer, and hands on all its rank; a customer nobody referred has none, and its
  rank is spread over everyone. So each customer's pagerank is proportional to its referral tree
  counted with weight alpha^level (itself 1, direct referrals alpha, theirs alpha^2, ...): a tree
  size that counts near levels more than far ones. Sums to 1 over the network.
- influence_score = direct_referrals + indirect_referral_weight x (referral_tree_size -
  direct_referrals); influence_rank = 1 + the customers with a higher score (1 = most
  influential; equal scores share a rank); is_top_influencer marks exactly `top_n` (when above
  0) or ceil(top_share x referrers) customers, best score first, ties at the cut settled by tree
  size, then pagerank, then customer_id.

Cycles. Referral data holds cycles after identity merges (A referred B, and a contact later merged
into B had referred a contact later merged into A). Descendants are still well defined: everyone
on a cycle reaches the whole cycle and every tree hanging from it. The trees are counted on the
condensation (each strongly connected component one node, a DAG): sizes and revenues are summed
from the leaves up, once per component, so the whole network takes time linear in its size, where
networkx's descendants() per customer takes the sum of all tree sizes: quadratic on a long chain
(8,000 customers in one chain: 0.4 s against 15 s of CPU; on the million below, where trees are
at most 6 levels deep, descendants() would take 1.2 s of the run's 11-13 s).
With one referrer per customer nothing points into a cycle from outside, so a cycle is the top of
its tree; the depth of a customer on a cycle of length L is the largest, over the cycle's members
at (j - i) mod L steps from it, of that distance plus the depth below that member.

Choosing the score. The simulator plants a referral propensity per customer (`influence`, Pareto
with a heavy tail) and draws each referred new customer's referrer among the customers active
that day in proportion to it: a referrer's *direct* referrals follow its influence; the referrals
its referred customers make follow theirs. Spearman correlation with the planted influence among
customers who referred anyone (the issue's acceptance: at least 0.45), measured with this module on
three simulated warehouses (customers x days, seed; edges from marts.dim_customers, identities
resolved, crm_id mapped to customer_id; pagerank at alpha 0.85 and 0.15; score at
indirect_referral_weight w):

    simulation                      referrers  direct  tree  pr .85  pr .15  w=0.1  w=0.5  revenue
    4,000 x 520, seed 5 (dev)             293   0.557  0.519   0.523   0.528  0.528  0.524    0.259
    4,000 x 395, seed 3 (truth tests)     193   0.540  0.467   0.479   0.482  0.482  0.479    0.262
    100,000 x 400, seed 5, dirty        5,606   0.526  0.496   0.500   0.504  0.504  0.502    0.185

Counting direct referrals is best on every simulation; anything that adds to it (the deeper tree,
PageRank at any damping, breaking its ties by the time the customer was known) ranks worse. About
82% of the referrers referred exactly one customer, and Spearman's correlation, with average ranks
for ties, rewards leaving them tied: the same counts with ties broken by customer_id reach only
0.35, 0.42 and 0.36 (by tree size, then pagerank: 0.34, 0.39, 0.35). So `indirect_referral_weight`
defaults to 0 (score = direct referrals; a business that values cascades can raise it) and equal
scores share a rank. Tree revenue ranks poorly: it measures what the referred customers spend,
not how many a referrer brings.

How high can it get. With one or two referrals per referrer, a count is a noisy reading of a
propensity. The expected referral count of each referrer (its influence times the sum, over the
days it was active, of that day's referred customers over the active customers' total
influence: the simulator's draw) reaches 0.898 with the planted influence on the dev simulation
(0.935 and 0.950 on the other two): out of reach, as only the realised counts are seen. Redrawing
the referrals of the same simulation (Poisson counts with those expectations), counting reaches
0.520 on average on the dev simulation (5%-95% of 200 redraws: 0.465-0.578), 0.489 (0.421-0.548)
on the 4,000 x 395 and 0.510 (0.500-0.521, 30 redraws) on the 100,000. The realised 0.557, 0.540
and 0.526 are such draws: the acceptance's 0.45 holds on these networks, but with a few hundred
referrers a network the same simulation could have drawn falls below it now and then. Knowing
more does not lift it under this measure: ranking by the posterior expected quantile of the
influence given the count and the customer's true active days (oracle knowledge of the
simulator's prior and churn dates) reaches 0.48, 0.39 and 0.44, below counting, since it breaks
the count's ties.

Quality in production: there is no planted truth, so nothing is held out and no floor is judged
(tests/test_influence.py checks the counting on hand-built graphs).

Scale: 1,000,000 customers with 150,000 referrals (synthetic: referred customers drawn at random,
their referrers with the simulator's Pareto(1.2) + 0.05 weights; 213,891 customers in the network,
75,177 referrers, largest tree 1,824, depth at most 6): 11-13 s of CPU, a peak of 0.9 GB resident
(0.35 GB of it the inputs) on two shared cores, most of it in networkx's pure-Python graph
building, components and condensation.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ml_tasks.contract import InsufficientData, check_range, checked_input, typed_results

if TYPE_CHECKING:
    import networkx as nx
    import pandas as pd

MODEL_VERSION = "referral-influence-1"
REFERRALS = "features.customer_referrals"
FEATURES = "features.customer_features"
INFLUENCE = "ml.customer_influence"
# Every figure is counted, not estimated: a network of a single referral is described correctly.
MINIMUM_EDGES = 1
# None: nothing is held out and there is no truth in production to judge the ranking against; the
# counting is checked by tests on hand-built graphs, the ranking on the simulator's planted
# influence (see the module docstring).
QUALITY_FLOORS: dict[str, float] = {}

INFLUENCE_COLUMNS: dict[str, str] = {
    "customer_id": "string",
    "referred_by_customer_id": "string",
    "direct_referrals": "integer",
    "referral_tree_size": "integer",
    "referral_tree_revenue": "double",
    "referral_depth": "integer",
    "pagerank": "double",
    "influence_score": "double",
    "influence_rank": "integer",
    "is_top_influencer": "boolean",
}
_REFERRAL_COLUMNS = ("customer_id", "referred_by_customer_id")
_FEATURE_COLUMNS = ("customer_id", "monetary")


@dataclass(frozen=True)
class InfluenceSettings:
    indirect_referral_weight: float = field(default=0.0, metadata={
        "doc": "referral_influence: weight of each indirect referral (tree size beyond the direct"
               " referrals) in influence_score; 0 = direct referrals only (best on simulated truth)"})
    pagerank_alpha: float = field(default=0.85, metadata={
        "doc": "referral_influence: PageRank damping; each level down the referral tree counts alpha"
               " times the level above"})
    top_share: float = field(default=0.01, metadata={
        "doc": "referral_influence: share of the customers who referred anyone flagged"
               " is_top_influencer (at least one), when top_n is 0"})
    top_n: int = field(default=0, metadata={
        "doc": "referral_influence: when above 0, exactly this many top influencers (fewer if fewer"
               " referred anyone) instead of top_share"})

    def __post_init__(self) -> None:
        check_range("indirect_referral_weight", self.indirect_referral_weight, minimum=0.0, maximum=1.0)
        check_range("pagerank_alpha", self.pagerank_alpha, minimum=0.01, maximum=0.99)
        check_range("top_share", self.top_share, minimum=0.0, maximum=1.0)
        check_range("top_n", self.top_n, minimum=0, kind=int)

    def top_count(self, referrers: int) -> int:
        if self.top_n:
            return min(self.top_n, referrers)
        return min(referrers, max(1, math.ceil(self.top_share * referrers)))


# ---- the run ------------------------------------------------------------------------------------

def run(inputs: Mapping[str, "pd.DataFrame"], as_of_date: dt.date,
        settings: InfluenceSettings) -> tuple[dict[str, "pd.DataFrame"], dict]:
    """Influence figures of every customer in the referral network known on `as_of_date`."""
    import networkx as nx
    import pandas as pd

    referrals = checked_input(inputs, REFERRALS, _REFERRAL_COLUMNS, (REFERRALS, FEATURES))
    features = checked_input(inputs, FEATURES, _FEATURE_COLUMNS, (REFERRALS, FEATURES))
    edges, cleaning = referral_edges(referrals)
    if len(edges) < MINIMUM_EDGES:
        raise InsufficientData(
            f"{REFERRALS}: {len(edges)} referrals between two customers known on {as_of_date}"
            f" ({len(referrals)} rows), expected at least {MINIMUM_EDGES}"
        )
    graph = nx.DiGraph()
    graph.add_nodes_from(sorted(set(edges["referred_by_customer_id"]) | set(edges["customer_id"])))
    graph.add_edges_from(zip(edges["referred_by_customer_id"], edges["customer_id"]))
    revenue = _revenue(features, graph)

    components = list(nx.strongly_connected_components(graph))
    trees = referral_trees(graph, revenue, components)
    ranks = nx.pagerank(
        graph.reverse(copy=False),
        alpha=settings.pagerank_alpha,
        # networkx stops when the summed change is under nodes x tol: ask for 1e-10 in all.
        tol=1e-10 / graph.number_of_nodes(),
        max_iter=10_000,
    )
    frame = pd.DataFrame({"customer_id": list(graph.nodes)})
    frame["referred_by_customer_id"] = frame["customer_id"].map(dict(zip(edges["customer_id"], edges["referred_by_customer_id"])))
    frame["direct_referrals"] = [graph.out_degree(node) for node in graph.nodes]
    frame["referral_tree_size"] = [trees[node][0] for node in graph.nodes]
    frame["referral_tree_revenue"] = [round(trees[node][1], 6) for node in graph.nodes]
    frame["referral_depth"] = [trees[node][2] for node in graph.nodes]
    frame["pagerank"] = [ranks[node] for node in graph.nodes]
    frame["influence_score"] = frame["direct_referrals"] + settings.indirect_referral_weight * (
        frame["referral_tree_size"] - frame["direct_referrals"])
    # Equal scores share a rank (1 + customers scored higher): breaking the ties among the many
    # single referrals by anything measured here ranks worse against the simulator's truth.
    frame["influence_rank"] = frame["influence_score"].rank(method="min", ascending=False)
    referrers = int((frame["direct_referrals"] > 0).sum())
    order = frame.sort_values(["influence_score", "referral_tree_size", "pagerank", "customer_id"],
                              ascending=[False, False, False, True], kind="stable").index
    frame["is_top_influencer"] = False
    frame.loc[order[:settings.top_count(referrers)], "is_top_influencer"] = True
    frame = frame.sort_values("customer_id", kind="stable")
    influence = typed_results(frame, INFLUENCE_COLUMNS)

    top_rows = influence[influence["is_top_influencer"]]
    cycles = [component for component in components if len(component) > 1]
    metrics: dict[str, Any] = {
        **cleaning,
        "edges": int(len(edges)),
        "network_customers": int(graph.number_of_nodes()),
        "referrers": referrers,
        "trees": int(graph.number_of_nodes() - len(edges) + len(cycles)),
        "largest_tree": int(influence["referral_tree_size"].max()),
        "deepest_tree": int(influence["referral_depth"].max()),
        "cycles": len(cycles),
        "customers_in_cycles": int(sum(len(component) for component in cycles)),
        "customers_without_features": int(sum(1 for node in graph.nodes if node not in revenue)),
        "referred_revenue": round(float(sum(revenue.get(node, 0.0) for node in edges["customer_id"])), 2),
        "max_direct_referrals": int(influence["direct_referrals"].max()),
        "mean_direct_referrals_of_referrers": round(len(edges) / referrers, 6),
        "top_influencers": int(len(top_rows)),
        # Customers the top influencers referred themselves, as a share of all referred customers.
        "top_influencers_referral_share": round(float(top_rows["direct_referrals"].sum()) / len(edges), 6),
        "quality_note": "no planted truth in production: the ranking was measured on simulations (see the module docstring)",
    }
    return {INFLUENCE: influence}, metrics


def _revenue(features: "pd.DataFrame", graph: "nx.DiGraph") -> dict[str, float]:
    """customer_id -> net revenue (`monetary`; 0 when null) of the customers in the network."""
    import pandas as pd

    ids = features["customer_id"].astype("str")
    if ids.duplicated().any():
        raise ValueError(f"{FEATURES}: customer {ids[ids.duplicated()].iloc[0]!r} appears more than once;"
                         " expected one row per customer")
    in_network = ids.isin(list(graph.nodes)).to_numpy()
    amounts = pd.to_numeric(features["monetary"][in_network].astype("object"), errors="coerce").astype("float64").fillna(0.0)
    return dict(zip(ids[in_network], amounts.to_numpy().tolist()))


def referral_edges(referrals: "pd.DataFrame") -> tuple["pd.DataFrame", dict[str, int]]:
    """One (customer_id, referred_by_customer_id) edge per referred customer, sorted by customer_id:
    self-referrals and rows without a referrer dropped, one referrer kept per customer (the earliest
    referral_date when the column is there, then the smallest referrer id); with the counts dropped."""
    import pandas as pd

    edges = pd.DataFrame({
        "customer_id": referrals["customer_id"].astype("str"),
        "referred_by_customer_id": referrals["referred_by_customer_id"].astype("str"),
        "referral_date": (pd.to_datetime(referrals["referral_date"]) if "referral_date" in referrals.columns
                          else pd.Series(pd.NaT, index=referrals.index, dtype="datetime64[us]")),
    })
    known = referrals["customer_id"].notna() & referrals["referred_by_customer_id"].notna()
    own = known & (edges["customer_id"] == edges["referred_by_customer_id"])
    edges = edges[known & ~own]
    edges = edges.sort_values(["customer_id", "referral_date", "referred_by_customer_id"], na_position="last", kind="stable")
    duplicates = edges.duplicated(["customer_id", "referred_by_customer_id"])
    later = edges.duplicated("customer_id") & ~duplicates
    kept = edges[~edges.duplicated("customer_id")]
    counts = {
        "input_rows": int(len(referrals)),
        "rows_without_referrer": int((~known).sum()),
        "self_referrals_dropped": int(own.sum()),
        "duplicate_referrals_dropped": int(duplicates.sum()),
        "customers_with_several_referrers": int(edges.loc[later, "customer_id"].nunique()),
        "later_referrals_dropped": int(later.sum()),
    }
    return kept[["customer_id", "referred_by_customer_id"]].reset_index(drop=True), counts


# ---- counting the trees ----------------------------------------------------------------------------

def referral_trees(graph: "nx.DiGraph", revenue: Mapping[str, float],
                   components: list[set[str]]) -> dict[str, tuple[int, float, int]]:
    """customer -> (tree size, tree revenue, depth) on a referral graph whose customers have at most
    one referrer each, counted bottom-up on its condensation by its strongly connected `components`
    (see the module docstring)."""
    import networkx as nx

    condensed = nx.condensation(graph, components)
    size: dict[int, int] = {}
    total: dict[int, float] = {}
    depth: dict[int, int] = {}
    figures: dict[str, tuple[int, float, int]] = {}
    for component in reversed(list(nx.topological_sort(condensed))):
        members = condensed.nodes[component]["members"]
        below = list(condensed.successors(component))
        size[component] = len(members) + sum(size[child] for child in below)
        # Summed in a fixed order: a set's order changes from process to process, a float sum with it.
        total[component] = sum(revenue.get(node, 0.0) for node in sorted(members)) + sum(total[child] for child in below)
        depth[component] = max((depth[child] + 1 for child in below), default=0)
        if len(members) == 1:
            (node,) = members
            figures[node] = (size[component] - 1, total[component] - revenue.get(node, 0.0), depth[component])
            continue
        cycle = _cycle_order(graph, members)
        hanging = [max((depth[condensed.graph["mapping"][child]] + 1 for child in graph.successors(node) if child not in members),
                       default=0) for node in cycle]
        for node, node_depth in zip(cycle, _cycle_depths(hanging)):
            figures[node] = (size[component] - 1, total[component] - revenue.get(node, 0.0), node_depth)
    return figures


def _cycle_order(graph: "nx.DiGraph", members: set[str]) -> list[str]:
    """The members of a referral cycle in referral order, from the smallest id. With one referrer
    per customer a strongly connected component is a simple cycle: each member refers exactly one
    other member."""
    start = min(members)
    cycle = [start]
    while True:
        (following,) = [child for child in graph.successors(cycle[-1]) if child in members]
        if following == start:
            return cycle
        cycle.append(following)


def _cycle_depths(hanging: list[int]) -> list[int]:
    """Depth of each member of a cycle (in cycle order) given the depth of what hangs below each
    member outside the cycle (0: nothing): from member i, member j is (j - i) mod L steps away, so
    depth(i) = max over j of (j - i) mod L + hanging[j]; computed with running maxima in O(L)."""
    length = len(hanging)
    reach = [position + below for position, below in enumerate(hanging)]
    ahead = reach[:]  # max over j >= i of j + hanging[j]
    for position in range(length - 2, -1, -1):
        ahead[position] = max(ahead[position], ahead[position + 1])
    behind = [-length] * length  # max over j < i of j + length + hanging[j]
    for position in range(1, length):
        behind[position] = max(behind[position - 1], reach[position - 1] + length)
    return [max(ahead[position], behind[position]) - position for position in range(length)]
