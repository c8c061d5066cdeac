//! [`Pb`]: a protobuf message carried through serde as its protobuf encoding, so raft log entries
//! hold etcd's own wire bytes for each request.

use std::fmt;
use std::marker::PhantomData;

use prost::Message;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A protobuf message that serializes as its encoded bytes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pb<T>(pub T);

impl<T: Message> Serialize for Pb<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0.encode_to_vec())
    }
}

struct PbVisitor<T>(PhantomData<T>);

impl<'de, T: Message + Default> Visitor<'de> for PbVisitor<T> {
    type Value = Pb<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("protobuf-encoded bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        T::decode(v).map(Pb).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut buf = Vec::new();
        while let Some(b) = seq.next_element::<u8>()? {
            buf.push(b);
        }
        self.visit_bytes(&buf)
    }
}

impl<'de, T: Message + Default> Deserialize<'de> for Pb<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(PbVisitor(PhantomData))
    }
}
