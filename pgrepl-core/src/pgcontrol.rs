//! Reading pg_control (being written).
