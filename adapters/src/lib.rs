//! Adaptation methods, one file per recipe `kind`, each implementing the framework's
//! `Adaptation` trait (the adapters issue fills this crate; the recipe side of every method,
//! `losa_framework::recipe::AdapterConfig`, already exists).
