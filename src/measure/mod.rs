//! Memory meters. CPU: the counting allocator (installed as global allocator by the binary).

pub mod alloc;
