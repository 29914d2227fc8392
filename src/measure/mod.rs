//! Memory meters. CPU: the counting allocator (installed as global allocator by the binary), and
//! the machine's own memory (what a simulated capacity must fit in).

pub mod alloc;
pub mod host;
