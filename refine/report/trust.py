"""The report's "Trust" and "Annotators" sections, from ``run.json`` (and ``annotators.parquet``):
the policy refine followed and why, the data's evidence, what the verified rows show; in a run
with votes, the consensus refine took and each annotator's estimated accuracy."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from refine.report.cells import NOT_RECORDED, decimal, integer, number, plain, short
from refine.report.page import escape, note, table


def trust_section(summary: dict[str, Any]) -> str:
    """The policy refine followed (keep, rules or posterior) and why, the data's own evidence,
    and what the verified rows show, scored out of fold."""
    trust = summary.get("trust")
    if not isinstance(trust, dict):
        return note(f"Trust: {NOT_RECORDED} (a run from before refine chose a policy).")
    reason = str(trust.get("reason", ""))
    attribute = ' class="warn"' if trust.get("policy") == "keep" else ""
    html = (
        f"<p{attribute}><strong>{escape(trust.get('policy', ''))}</strong>: {escape(reason)}.</p>"
    )
    evidence = trust.get("evidence") or {}
    calibration = trust.get("calibration") or {}
    # Keyed by run.json's "method", which may be missing (None).
    calibrated_how: dict[str | None, str] = {
        "verified": "against the verified labels",
        "noise": "through the estimated label noise",
        "none": "not: they speak of the given labels",
    }
    rows = [
        ("model's flags / labelled rows", decimal(evidence.get("flag_rate"), 3)),
        ("noise seen at the model's surest rows", decimal(evidence.get("anchor_noise"), 3)),
        *(
            [("noise seen on the verified rows", decimal(evidence["verified_noise"], 3))]
            if evidence.get("verified_noise") is not None
            else []
        ),
        *(
            [
                (
                    "share of the flagged verified rows that are wrong labels (measured)",
                    decimal(evidence["verified_flag_precision"], 3),
                )
            ]
            if evidence.get("verified_flag_precision") is not None
            else []
        ),
        (
            "estimated share of flags that are wrong labels (needed without verified rows)",
            f"{decimal(evidence.get('estimated_flag_precision'), 3)} "
            f"({decimal(evidence.get('min_flag_precision'), 2)})",
        ),
        (
            "probabilities of the true class, calibrated",
            calibrated_how.get(calibration.get("method"), NOT_RECORDED)
            + (
                f" (temperature {calibration['temperature']:.3f})"
                if calibration.get("method") in ("verified", "noise")
                else ""
            )
            + (
                "; the verified rows were not used: they do not stand for the table (rows "
                "picked for review are the doubtful ones)"
                if calibration.get("verified_rows_representative") is False
                else ""
            ),
        ),
    ]
    gains = trust.get("gains")
    if gains:
        rows.append(
            (
                "verified labels fixed minus broken, per policy (cross-fitted)",
                ", ".join(f"{k} {v:+d}" for k, v in gains.items()),
            )
        )
    html += table(["", ""], [[k, v] for k, v in rows])
    measured = trust.get("measured")
    if measured:
        body = [
            ["given labels", *interval_cells(measured["given_accuracy"])],
            ["refined labels", *interval_cells(measured["refined_accuracy"])],
            [
                f"corrections ({measured['corrections']['rows']:,} rows): right",
                *interval_cells(measured["corrections"]["precision"]),
            ],
            [
                f"exclusions ({measured['exclusions']['rows']:,} rows): label was wrong",
                *interval_cells(measured["exclusions"]["precision"]),
            ],
        ]
        for c in measured.get("per_class", []):
            body.append(
                [f"class {short(str(c['class']))}: given", *interval_cells(c["given_accuracy"])]
            )
            body.append(
                [
                    f"class {short(str(c['class']))}: refined",
                    *interval_cells(c["refined_accuracy"]),
                ]
            )
        html += table(
            ["on verified rows", "share", "95% interval", "rows"],
            body,
            numeric=(1, 2, 3),
            caption=f"{measured['rows']:,} verified rows with a given label. Each row's refined "
            "label is the one refine would have set had the row not been verified, chosen on "
            "the other verified rows (cross-fitted). Rows picked by refine review are harder "
            "than the rest: figures on them describe those rows, not the whole table.",
        )
    return html


def interval_cells(interval: dict[str, Any]) -> list[str]:
    if interval.get("value") is None:
        return ["–", "–", "0"]
    return [
        f"{interval['value']:.3f}",
        f"{interval['low']:.3f}–{interval['high']:.3f}",
        f"{interval['n']:,}",
    ]


# The report lists at most this many annotators, the least accurate first.
ANNOTATOR_ROWS = 50


def consensus_note(consensus: dict[str, Any] | None) -> str:
    """Which labels the rounds refined, the votes' majority or the annotator model's consensus,
    and the held-out scores that chose (run.json's ``annotators.consensus``)."""
    if not isinstance(consensus, dict) or not isinstance(
        consensus.get("heldout_log_likelihood"), dict
    ):
        return ""
    scores = ", ".join(
        f"{'majority' if name == 'majority' else 't = ' + name} {number(value, 3)}"
        for name, value in consensus["heldout_log_likelihood"].items()
    )
    temper = consensus.get("prior_temper")
    if temper is None:
        chosen = (
            "refine refined the majority vote (label_vote): no blend of the votes with the "
            "model's probabilities predicted held-out votes better"
        )
    else:
        chosen = (
            "each round refine took the annotator model's posterior as the labels, the votes "
            f"weighed with the model's probabilities raised to t = {number(temper, 2)}, which "
            "predicted held-out votes best (the last round's choice)"
        )
    return note(
        f"{chosen[0].upper()}{chosen[1:]} (mean held-out log-likelihood per vote: {scores})."
    )


def annotators_section(annotators: pa.Table) -> str:
    """The annotators of a run with votes, the least accurate first (annotators.parquet)."""
    rows = sorted(
        annotators.to_pylist(),
        key=lambda r: (r["accuracy"] is None, r["accuracy"] or 0.0, r["annotator"]),
    )
    body = [
        [
            plain(r["annotator"]),
            integer(r["labels_given"]),
            number(r["accuracy"], 3),
            "–".join(number(r[k], 3) for k in ("accuracy_low", "accuracy_high")),
            number(r["agreement"], 3),
        ]
        for r in rows[:ANNOTATOR_ROWS]
    ]
    more = len(rows) - ANNOTATOR_ROWS
    return note(
        "Each annotator's estimated accuracy (the share of its votes that are the true class, "
        "from the annotator model with the model's out-of-fold probabilities as prior), its 95% "
        "interval, and the share of its votes equal to the refined label. The least accurate "
        "come first" + (f"; {more} more are in annotators.parquet." if more > 0 else ".")
    ) + table(
        ["annotator", "votes", "accuracy", "95% interval", "agreement"], body, numeric=range(1, 5)
    )
