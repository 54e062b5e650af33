"""TwinTURBO: two-stage semi-supervised fine-tuning on cached foundation-model tokens."""
