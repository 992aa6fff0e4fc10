"""The stream processor: faust agents that run topologies over Kafka events."""
