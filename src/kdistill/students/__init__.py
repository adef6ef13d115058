"""Students: loading the model that learns, and cutting layers from a bigger one."""
