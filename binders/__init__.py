"""Built-in binders: one subpackage per backend, each registered via the ``binder`` entry points."""
