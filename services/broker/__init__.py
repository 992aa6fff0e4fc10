"""Kafka for laptops and CI: a real single-node Apache Kafka (KRaft) on loopback."""
