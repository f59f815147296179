"""hwsim: simulate a model on a fixed-point accelerator target, calibrate, export, compare with the
integer runtime. Submodules that need torch import it themselves; ``import hwsim`` stays light."""
__version__ = "0.1.0"
