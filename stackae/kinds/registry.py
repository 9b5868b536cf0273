"""The registered layer kinds, by name, by spec class and by layer class."""

_KINDS = {}  # name -> LayerKind


def register_kind(kind):
    """Register a LayerKind instance (its name must be new); returns it."""
    for attribute in ("name", "spec_class", "layer_class"):
        if getattr(type(kind), attribute, None) is None:  # a property (lazy import) counts
            raise ValueError(f"A layer kind needs a `{attribute}`. Received: kind={kind!r}")
    if kind.name in _KINDS and type(_KINDS[kind.name]) is not type(kind):
        raise ValueError(f"A layer kind named {kind.name!r} is already registered.")
    _KINDS[kind.name] = kind
    return kind


def get_kind(name):
    if name not in _KINDS:
        raise ValueError(f"Unknown layer kind {name!r}. Registered kinds: {sorted(_KINDS)}")
    return _KINDS[name]


def kind_names():
    return tuple(_KINDS)


def kind_of(thing):
    """The kind of a spec, a tied layer, or a spec's config dict (no "kind": dense)."""
    if isinstance(thing, dict):
        return get_kind(thing.get("kind", "dense"))
    kinds = list(reversed(list(_KINDS.values())))  # the last registered wins over its base
    for kind in kinds:  # specs first: asking for a layer class may import the backend
        if isinstance(thing, kind.spec_class):
            return kind
    for kind in kinds:
        if isinstance(thing, kind.layer_class):
            return kind
    raise ValueError(
        f"{type(thing).__name__} is not the spec or the layer of a registered layer kind "
        f"({sorted(_KINDS)}); see stackae.kinds.register_kind"
    )


def spec_of(value):
    """A spec from a spec or from its config dict."""
    if isinstance(value, dict):
        return kind_of(value).spec_from_config(value)
    kind_of(value)  # refuses what no kind knows
    return value
