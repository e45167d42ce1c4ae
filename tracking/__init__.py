"""MLflow for i3ad: run layout, logging, model packaging, registry promotion, comparison tables."""
