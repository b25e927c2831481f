"""KFP components: typed shims over the transferkit library, one folder per step."""
