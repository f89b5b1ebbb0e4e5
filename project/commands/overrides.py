"""What a Hydra override sets, however it was typed: `+x=1` and `x=1` set the same key, `1e-4` and `0.0001` the same
value, and a job is the set of (key, value) pairs its overrides give, in any order (project-sweep continue matches
jobs to their dirs by it)."""
from project.errors import UserError


def parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def parse(override: str):
    try:
        return parser().parse_overrides([override])[0]
    except Exception as e:  # Hydra's grammar errors name the position
        raise UserError(f"{override!r} is not an override Hydra can read ({' '.join(str(e).split())}). Type "
                        "key=value, or key=a,b,c for a swept list.") from None


def key_of(o) -> str:
    """The key an override sets: +x=1 and x=1 both set x; ~x deletes it (a different override)."""
    key = o.key_or_group + (f"@{o.package}" if o.package else "")
    return ("~" if o.is_delete() else "") + key


def canonical(value) -> str:
    """One value as text that is equal for equal values: 1e-4 and 0.0001 are both 0.0001, [8,16,32] is [8, 16, 32]."""
    return value if isinstance(value, str) else repr(value)


def values_of(o) -> list[str]:
    """The values of an override, each read back as Hydra writes it into a job's overrides: several for a list."""
    if o.is_sweep_override():
        if not o.is_discrete_sweep():
            raise UserError(f"{o.input_line!r} is not a list of values, which Hydra's basic sweeper cannot expand "
                            "into jobs. Type the values: key=a,b,c (or range(start,stop,step)).")
        return [canonical(parse(f"{o.get_key_element()}={v}").value()) for v in o.sweep_string_iterator()]
    return [canonical(o.value())]


def identity_of(override: str) -> tuple:
    """One override as what it sets: (key, its values), however it was written."""
    o = parse(override)
    return key_of(o), tuple(values_of(o))


def job_identity(overrides: list[str]) -> frozenset:
    """What a job computes, from its override strings: {(key, value)}; the order of the overrides does not count."""
    found = set()
    for text in overrides:
        o = parse(text)
        found.add((key_of(o), values_of(o)[0]))
    return frozenset(found)


def show(identity: frozenset, keys=None) -> str:
    """key=value ... of an identity (only `keys`, when given), for messages."""
    return " ".join(f"{k}={v}" for k, v in sorted(identity) if keys is None or k in keys)
