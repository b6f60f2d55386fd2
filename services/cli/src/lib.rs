//! The `alphadome` command's library: its command line ([`args`]), what
//! each command does ([`commands`], printed by [`output`]), composing
//! services into one process ([`stack`], served by [`server`], with the
//! health endpoints of [`health`]), and the terminal chat with a tenant's
//! bot ([`simulate`]).

pub mod args;
pub mod commands;
pub mod health;
pub mod output;
pub mod server;
pub mod simulate;
pub mod stack;
