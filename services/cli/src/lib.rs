//! The `alphadome` command's library: composing services into one process
//! ([`stack`]) and the terminal chat with a tenant's bot ([`simulate`]).

pub mod simulate;
pub mod stack;
