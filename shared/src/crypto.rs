//! OwnTracks payload encryption: libsodium `crypto_secretbox`.
//! (Skeleton: being filled in.)
