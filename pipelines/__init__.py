"""KFP pipelines composed from the components in ``components/``."""
