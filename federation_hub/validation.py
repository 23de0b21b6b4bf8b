"""Does a contribution fit its round? Shared by the hub (plain tiers, on submission) and group
members (sealed tier, after decrypting), so both hold contributions to the same rules. And does a
release a peer sends fit the shapes it claims: a signed peer is trusted to be who it is, not to
be correct."""

from __future__ import annotations

from federation_hub.aggregate.lora import LoraPair, update_norm
from federation_hub.errors import Invalid


def check_deltas(
    where: str,
    pairs: dict[str, LoraPair],
    shapes: dict,
    max_norm: float,
    round_id: int,
    loc: tuple[str, ...] = (),
) -> float:
    """The deltas must be exactly the round's linears at its shapes, finite, within its norm
    bound; returns the update's norm. `loc`: where the deltas sit in the request body, if any."""
    expected, got = set(shapes), set(pairs)
    if got != expected:
        missing, extra = sorted(expected - got), sorted(got - expected)
        raise Invalid(
            f"{where}.deltas: round {round_id} expects other linears (missing {missing[:5]}, unexpected {extra[:5]})",
            loc=(*loc, "deltas"),
        )
    for name, pair in pairs.items():
        shape = shapes[name]
        want_a = (shape["rank"], shape["in_features"])
        want_b = (shape["out_features"], shape["rank"])
        if pair.a.shape != want_a or pair.b.shape != want_b:
            raise Invalid(
                f"{where}.deltas.{name}: A {list(pair.a.shape)} B {list(pair.b.shape)}, "
                f"round {round_id} expects A {list(want_a)} B {list(want_b)}",
                loc=(*loc, "deltas", name),
            )
    norm = update_norm(pairs)
    if not norm <= max_norm:  # also catches NaN from a payload that was never schema-checked
        raise Invalid(f"{where}: update norm {norm:.4g} exceeds the round's bound {max_norm:g}", loc=loc)
    return norm


def check_release(where: str, pairs: dict[str, LoraPair], shapes: dict) -> None:
    """A release has exactly its round's linears, each A [k, in] and B [out, k] of one rank k.
    (Finite values, names and a residual per linear are the codec's checks.)"""
    if set(pairs) != set(shapes):
        missing, extra = sorted(set(shapes) - set(pairs)), sorted(set(pairs) - set(shapes))
        raise Invalid(
            f"{where}: linears differ from its shapes (missing {missing[:5]}, unexpected {extra[:5]})"
        )
    for name, pair in pairs.items():
        shape = shapes[name]
        if pair.a.shape[1] != shape["in_features"] or pair.b.shape[0] != shape["out_features"]:
            raise Invalid(
                f"{where}.{name}: A {list(pair.a.shape)} B {list(pair.b.shape)} do not fit "
                f"in {shape['in_features']}, out {shape['out_features']}"
            )
