//! The sandbox: faulty guests and plugins contained, and guests that
//! attack the host on purpose (some written by hand in WAT, `raw`).

mod containment;
mod hostile;
mod raw;
