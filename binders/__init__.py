"""Built-in binders, one subpackage per backend (each registered through the ``binder`` entry points)."""
