//! Switchover, failover and rejoin (being written).
