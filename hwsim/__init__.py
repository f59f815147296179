"""hwsim: simulate a model on a fixed-point accelerator target, calibrate, export, compare with the
integer runtime. Submodules that need torch import it themselves; ``import hwsim`` stays light."""
__version__ = "0.1.0"


def __getattr__(name):  # lazy: ``hwsim.simulate`` imports torch only when used
    if name in ("simulate", "SimModel"):
        from . import sim

        return getattr(sim, name)
    raise AttributeError(f"module 'hwsim' has no attribute {name!r}")
