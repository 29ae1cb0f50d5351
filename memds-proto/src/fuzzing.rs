//! Fuzz targets over everything a peer or a file hands the sans-IO core, shared by the
//! cargo-fuzz crate (`fuzz/`, the long runs) and the test suite (`tests/fuzz.rs`, a short
//! bounded run of each on stable Rust). See `docs/fuzzing.md`.
//!
//! Each target takes arbitrary bytes and must return normally whatever they are: a decoder
//! refusing its input with an error is a pass; a panic, an abort or an allocation out of
//! proportion to the input is a finding. Where a decoder accepts the input, the target also
//! checks what must then hold (re-encoding decodes to the same value, the compact encoding
//! agrees with the model), so a decoder that accepts something it should not is a finding too.
//!
//! Also here: the generator of the checked-in seed corpus ([`seed_corpus`]) and the mutations
//! the in-suite runs apply to it ([`Mutator`]), so both test suites and the corpus agree on one
//! definition of each.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rkyv::util::AlignedVec;

use crate::compact::{CompactTable, NodeInterner};
use crate::model::{BatchEdit, NodeSpec, PartitionSpec, TableMap, UpdateSpec};
use crate::synth::{self, SynthConfig};
use crate::wire::{
    self, BatchUpdate, ErrorCode, ErrorReply, FormatVersions, FrameDecoder, HashRange, NodeList,
    PartitionUpdate, RangeUpdate, Request, Response, Routes, ServerInfo, ServerStats, Summary,
    TableInfo, TableSummary, TreeDigests, TreeEntry, WireError, WireNode, WireRoute, WriteAck,
};
use crate::{snapshot, wire::FRAME_HEADER_LEN};

/// The frame limit the frame-decoder target runs with: small, so the fuzzer reaches the
/// over-limit path with short inputs.
pub const FUZZ_MAX_FRAME: usize = 4096;
/// The archive limit the snapshot target decodes with.
pub const FUZZ_MAX_ARCHIVE: u64 = 1 << 20;

/// A fuzz target: takes any bytes, returns normally or panics on a finding.
pub type Target = fn(&[u8]);

/// The targets of this crate, by the names cargo-fuzz and the corpus folders use.
pub const TARGETS: [(&str, Target); 4] = [
    ("frame_decoder", frame_decoder),
    ("requests", requests),
    ("snapshot", snapshot),
    ("json", json),
];

/// The frame decoder over a stream delivered in pieces.
///
/// The first four bytes of `data` are piece lengths, used in turn (0: the rest of the stream);
/// the rest is the stream. Checks, against a reference reading of the whole
/// stream: the same frames come out in the same order with the same ids and payloads, the same
/// error (if any) ends the stream, `buffered()` is what was pushed and not yet returned, no
/// payload is over the limit, a payload that validates once copied to an aligned buffer
/// validates in place too, and the memory held stays in proportion to the bytes pushed.
pub fn frame_decoder(data: &[u8]) {
    let (pieces, stream) = data.split_at(data.len().min(4));
    let expected = reference_frames(stream, FUZZ_MAX_FRAME);
    let mut decoder = FrameDecoder::new(FUZZ_MAX_FRAME);
    let mut frames: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut error = None;
    let mut pushed = 0usize;
    let mut taken = 0usize;
    let mut turn = 0usize;
    while error.is_none() && (pushed < stream.len() || turn == 0) {
        // A piece of 0 (or no piece lengths at all) delivers the rest of the stream at once.
        let piece = match pieces.get(turn % 4) {
            Some(&p) if p > 0 => usize::from(p),
            _ => stream.len(),
        };
        turn += 1;
        let end = (pushed + piece).min(stream.len());
        decoder.push(&stream[pushed..end]);
        pushed = end;
        loop {
            match decoder.next_frame() {
                Ok(Some((id, payload))) => {
                    assert!(
                        payload.len() + 8 <= FUZZ_MAX_FRAME,
                        "a frame of {} bytes passed the limit of {FUZZ_MAX_FRAME}",
                        payload.len() + 8
                    );
                    check_payload_alignment(payload);
                    taken += FRAME_HEADER_LEN + payload.len();
                    frames.push((id, payload.to_vec()));
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
            assert_eq!(
                decoder.buffered(),
                pushed - taken,
                "buffered() after a frame"
            );
        }
        if error.is_none() {
            assert_eq!(
                decoder.buffered(),
                pushed - taken,
                "buffered() after a push"
            );
        }
        // Generous on purpose: the receive buffer may double, and a frame's payload buffer may
        // be reserved up to the limit; anything beyond is memory the input did not pay for.
        let bound = 2 * pushed + 2 * FUZZ_MAX_FRAME + 256 * 1024;
        assert!(
            decoder.allocated_bytes() <= bound,
            "{} bytes allocated after {pushed} pushed",
            decoder.allocated_bytes()
        );
    }
    assert_eq!(frames, expected.frames, "frames differ from the reference");
    assert_eq!(
        error, expected.error,
        "the stream's end differs from the reference"
    );
}

/// Every request and response decoder over one archive: [`wire::access_request`],
/// [`wire::decode_request`] and [`wire::decode_response`]. Checks that validation in place and
/// deserialization agree, that the archived and owned requests agree on being writes, and that
/// whatever decodes re-encodes (framed, for requests) and decodes back equal.
pub fn requests(data: &[u8]) {
    // The server hands decoders a payload the frame decoder aligned; do the same.
    let mut aligned = AlignedVec::<16>::with_capacity(data.len());
    aligned.extend_from_slice(data);
    let accessed = wire::access_request(&aligned);
    let decoded = wire::decode_request(&aligned);
    match (&accessed, &decoded) {
        (Ok(archived), Ok(request)) => {
            assert_eq!(
                archived.is_write(),
                request.is_write(),
                "is_write disagrees"
            );
            let mut frame = Vec::new();
            wire::encode_request(0x5eed, request, &mut frame);
            let again = reframe(&frame, 0x5eed);
            assert_eq!(
                wire::decode_request(&again).as_ref(),
                Ok(request),
                "a decoded request does not survive re-encoding"
            );
        }
        (Err(_), Err(_)) => {}
        (a, d) => panic!(
            "access_request and decode_request disagree: {:?} vs {:?}",
            a.as_ref().err(),
            d.as_ref().err()
        ),
    }
    if let Ok(response) = wire::decode_response(&aligned) {
        let mut frame = Vec::new();
        wire::encode_response(0x5eed, &response, &mut frame);
        let again = reframe(&frame, 0x5eed);
        // Debug text rather than `==`: a float counter may be NaN, which is not equal to itself
        // yet must come back as NaN.
        let back = wire::decode_response(&again).map(|r| format!("{r:?}"));
        assert_eq!(
            back,
            Ok(format!("{response:?}")),
            "a decoded response does not survive re-encoding"
        );
    }
}

/// The snapshot decoder, with a small limit, three ways: `data` as a snapshot; `data` as a
/// snapshot whose checksum field is made to match its payload (so mutations of the compressed
/// payload reach zstd, rkyv's validation and the model's rules instead of stopping at the
/// checksum); and `data` as an uncompressed archive, compressed and framed here (so mutations
/// reach the archive directly). An accepted snapshot must be a map on which [`check_map`] holds.
pub fn snapshot(data: &[u8]) {
    if let Ok(map) = snapshot::decode(data, FUZZ_MAX_ARCHIVE) {
        check_map(&map);
    }
    if let Some(payload) = data.get(snapshot::HEADER_LEN..) {
        let mut fixed = data.to_vec();
        fixed[16..24].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
        if let Ok(map) = snapshot::decode(&fixed, FUZZ_MAX_ARCHIVE) {
            check_map(&map);
        }
    }
    let compressed = zstd::bulk::compress(data, 1).expect("compressing in memory cannot fail");
    let framed = frame_snapshot(data.len() as u64, &compressed);
    if let Ok(map) = snapshot::decode(&framed, FUZZ_MAX_ARCHIVE) {
        check_map(&map);
    }
}

/// The JSON ingestion parser over UTF-8 input. An accepted map must print to JSON that parses
/// back to the same map, and [`check_map`] must hold on it.
pub fn json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(map) = TableMap::from_json(text) {
        let printed = map.to_json();
        match TableMap::from_json(&printed) {
            Ok(back) => assert_eq!(back, map, "JSON round trip changed the map"),
            Err(e) => panic!("a map's own JSON is refused: {e}"),
        }
        check_map(&map);
    }
}

/// What must hold of any map a decoder accepted: it snapshots and decodes back equal, and its
/// compact encoding verifies, converts back equal and answers lookups as the model does (at
/// every partition's first and last hash).
pub fn check_map(map: &TableMap) {
    match snapshot::decode(&snapshot::encode(map), u64::MAX) {
        Ok(back) => assert_eq!(&back, map, "snapshot round trip changed the map"),
        Err(e) => panic!("a map's own snapshot is refused: {e}"),
    }
    let mut interner = NodeInterner::default();
    let compact = CompactTable::new(map, &mut interner);
    assert!(compact.verify(), "a fresh compact table fails verification");
    assert_eq!(&compact.to_map(), map, "compact round trip changed the map");
    assert_eq!(compact.len(), map.partitions().len());
    for index in 0..map.partitions().len() {
        for hash in [map.partitions()[index].start, map.end_inclusive(index)] {
            let entry = compact.lookup(hash);
            assert_eq!(
                compact.floor_index(hash),
                map.floor_index(hash),
                "lookup of {hash:#x}"
            );
            assert_eq!(entry.start, map.partitions()[index].start);
            assert_eq!(compact.route(&entry), map.route(hash), "route of {hash:#x}");
        }
    }
}

/// One file of the seed corpus: `fuzz/corpus/<target>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    /// The target's name.
    pub target: &'static str,
    /// The file name.
    pub name: String,
    /// The content.
    pub bytes: Vec<u8>,
}

/// The generated part of the seed corpus of this crate's targets: small valid inputs of every
/// kind (every request and response variant, snapshots and JSON of small maps, pipelined and
/// refused frame streams). Deterministic, so the checked-in files can be compared with it.
pub fn seed_corpus() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: String, bytes: Vec<u8>| {
        seeds.push(Seed {
            target,
            name,
            bytes,
        });
    };
    let maps = sample_maps();
    for (i, request) in sample_requests(&maps[0]).iter().enumerate() {
        add(
            "requests",
            format!("request-{i:02}"),
            archive_of_request(request),
        );
    }
    for (i, response) in sample_responses(&maps[0]).iter().enumerate() {
        add(
            "requests",
            format!("response-{i:02}"),
            wire::archive_response(response).to_vec(),
        );
    }
    // Frame streams: the four piece lengths, then frames.
    let mut all = Vec::new();
    for (i, request) in sample_requests(&maps[0]).iter().enumerate() {
        wire::encode_request(i as u64 + 1, request, &mut all);
    }
    for (name, pieces) in [
        ("pipelined-whole", [0u8; 4]),
        ("pipelined-pieces", [1, 7, 0, 64]),
    ] {
        let mut stream = pieces.to_vec();
        stream.extend_from_slice(&all);
        add("frame_decoder", name.into(), stream);
    }
    let mut responses = vec![3, 5, 11, 2];
    for response in sample_responses(&maps[0]) {
        wire::encode_response(9, &response, &mut responses);
    }
    add("frame_decoder", "responses".into(), responses);
    let mut too_large = vec![16, 16, 16, 16];
    too_large.extend_from_slice(&(FUZZ_MAX_FRAME as u32 + 1).to_le_bytes());
    too_large.extend_from_slice(&[0; 16]);
    add("frame_decoder", "too-large".into(), too_large);
    add(
        "frame_decoder",
        "too-short".into(),
        vec![2, 2, 2, 2, 7, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7],
    );
    for (i, map) in maps.iter().enumerate() {
        add("snapshot", format!("map-{i}"), snapshot::encode(map));
        add(
            "snapshot",
            format!("archive-{i}"),
            snapshot::archive(map).to_vec(),
        );
        add("json", format!("map-{i}.json"), map.to_json().into_bytes());
    }
    add(
        "json",
        "hand-written.json".into(),
        br#"{"table": "orders", "version": 7,
 "nodes": [{"id": 1, "addr": "10.0.0.1:8100", "az": "az-a"},
           {"id": 2, "addr": "10.0.0.2:8100", "az": "az-b"}],
 "partitions": [{"id": 1, "start": 0, "epoch": 3, "replicas": [1, 2], "leader": 0},
                {"id": 2, "start": 18446744073709551615, "epoch": 4, "replicas": [2], "leader": 0}]}
"#
        .to_vec(),
    );
    seeds
}

/// Small maps of several shapes from the synthetic generator: one partition, a few, and a few
/// dozen with replica moves, plus one whose node ids are too large for a bitmap.
pub fn sample_maps() -> Vec<TableMap> {
    let small = |partitions: usize, seed: u64, replicas: usize| {
        synth::generate_table(
            &SynthConfig {
                seed,
                partitions,
                initial_partitions: partitions.min(4),
                replicas,
                nodes_per_az: 2,
                ..SynthConfig::default()
            },
            0,
        )
    };
    let mut maps = vec![small(1, 1, 1), small(5, 2, 3), small(40, 3, 3)];
    let sparse = TableMap::from_json(
        r#"{"table": "sparse", "version": 18446744073709551615,
            "nodes": [{"id": 4294967295, "addr": "h:1", "az": ""}, {"id": 0, "addr": "g:2", "az": "z"}],
            "partitions": [{"id": 0, "start": 0, "epoch": 0, "replicas": [4294967295, 0], "leader": 1},
                           {"id": 18446744073709551615, "start": 9223372036854775808, "epoch": 1,
                            "replicas": [0], "leader": 0}]}"#,
    )
    .expect("the sparse sample is a valid map");
    maps.push(sparse);
    maps
}

/// One request of every variant, about `map`.
pub fn sample_requests(map: &TableMap) -> Vec<Request> {
    let table = map.name().as_str().to_owned();
    let spec = |id: u64, start: u64| PartitionSpec {
        id,
        start,
        epoch: 9,
        replicas: map.partitions()[0]
            .replicas
            .as_slice()
            .iter()
            .map(|r| r.get())
            .collect(),
        leader: 0,
    };
    let update = if map.partitions().len() > 1 && map.end_inclusive(0) >= 2 {
        synth::split_update(map, 0, 1 << 40)
    } else {
        UpdateSpec {
            table: table.clone(),
            base_version: map.version().get(),
            version: map.version().get() + 1,
            end_inclusive: u64::MAX,
            nodes: vec![NodeSpec {
                id: 77,
                addr: "10.9.9.9:8100".into(),
                az: "az-z".into(),
            }],
            partitions: vec![spec(1, 0), spec(2, 1 << 63)],
        }
    };
    vec![
        Request::Lookup {
            table: table.clone(),
            hash: 0x1234_5678_9abc_def0,
            min_version: None,
        },
        Request::BatchLookup {
            table: table.clone(),
            hashes: vec![0, 1, u64::MAX, 1 << 63],
            min_version: Some(map.version().get()),
        },
        Request::Range {
            table: table.clone(),
            from: 0,
            to: u64::MAX,
            limit: 16,
            min_version: Some(1),
        },
        Request::GetNodes {
            table: table.clone(),
        },
        Request::GetTable {
            table: table.clone(),
            if_newer_than: Some(0),
        },
        Request::ListTables,
        Request::Stats,
        Request::Summary,
        Request::PutTable {
            snapshot: snapshot::encode(map),
        },
        Request::UpdatePartitions(PartitionUpdate::from(update.clone())),
        Request::UpdateBatch(BatchUpdate::from(BatchEdit::from(update))),
        Request::GetDelta {
            table: table.clone(),
            since: map.version().get().saturating_sub(1),
        },
        Request::TreeDigests {
            table: table.clone(),
            level: 1,
            from: 0,
            end_inclusive: u64::MAX,
        },
        Request::GetRanges {
            table: table.clone(),
            ranges: vec![HashRange {
                from: 0,
                end_inclusive: 1 << 40,
            }],
        },
        Request::DropTable {
            table: table.clone(),
            version: Some(map.version().get()),
        },
        Request::DropTable {
            table,
            version: None,
        },
        Request::ServerInfo,
    ]
}

/// One response of every variant, about `map`.
pub fn sample_responses(map: &TableMap) -> Vec<Response> {
    let name = map.name().as_str().to_owned();
    let version = map.version().get();
    vec![
        Response::Routes(Routes {
            table_version: version,
            nodes_digest: 7,
            routes: vec![WireRoute {
                partition: 1,
                start: 0,
                end_inclusive: u64::MAX,
                epoch: 2,
                leader: 1,
                replica_count: 2,
            }],
            replicas: vec![1, 2],
            truncated: true,
        }),
        Response::Nodes(NodeList {
            version,
            digest: 7,
            nodes: vec![WireNode {
                id: 1,
                addr: "10.0.0.1:8100".into(),
                az: "az-a".into(),
            }],
        }),
        Response::Table {
            version,
            snapshot: snapshot::encode(map),
        },
        Response::NotModified { version },
        Response::Delta(BatchUpdate {
            table: name.clone(),
            base_version: version.saturating_sub(1),
            version,
            nodes: vec![],
            ranges: vec![RangeUpdate {
                end_inclusive: u64::MAX,
                partitions: vec![],
            }],
        }),
        Response::NoDelta { version },
        Response::TreeDigests(TreeDigests {
            version,
            levels: 3,
            root: 11,
            entries: vec![TreeEntry {
                start: 0,
                end_inclusive: u64::MAX,
                count: 5,
                digest: 12,
            }],
            truncated: false,
        }),
        Response::Tables(vec![TableInfo {
            name: name.clone(),
            version,
            partitions: map.partitions().len() as u64,
            nodes: map.nodes().len() as u64,
            nodes_digest: 7,
            resident_bytes: 4096,
        }]),
        Response::Stats(ServerStats {
            cpu_seconds: 2.5,
            ..ServerStats::default()
        }),
        Response::Summary(Summary {
            instance: 3,
            ready: true,
            tables: vec![
                TableSummary {
                    name: name.clone(),
                    version,
                    digest: 11,
                    dropped: false,
                },
                TableSummary {
                    name: "gone".into(),
                    version: 3,
                    digest: 0,
                    dropped: true,
                },
            ],
        }),
        Response::Written(WriteAck {
            table: name.clone(),
            version,
            applied: true,
        }),
        Response::Dropped {
            table: name,
            version,
        },
        Response::Error(ErrorReply {
            code: ErrorCode::Stale,
            message: "table is at a newer version".into(),
            current_version: version + 1,
        }),
        Response::ServerInfo(ServerInfo {
            release: "0.2.0".into(),
            build: "0.2.0 (commit 1234567)".into(),
            protocols: vec!["memds/2".into(), "memds/1".into()],
            formats: vec![FormatVersions {
                name: "log".into(),
                writes: 2,
                reads_oldest: 2,
            }],
        }),
    ]
}

/// The archive of a request, as the server receives it in a frame's payload.
pub fn archive_of_request(request: &Request) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_request(0, request, &mut frame);
    frame.split_off(FRAME_HEADER_LEN)
}

/// Mutations of seed inputs for the in-suite runs, from a seeded generator so a failure
/// reproduces: bit flips, byte overwrites with interesting values, truncations, insertions,
/// deletions, and splices of two inputs.
#[derive(Debug)]
pub struct Mutator {
    rng: ChaCha8Rng,
}

impl Mutator {
    /// A mutator whose choices follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// A mutation of `input` (one to four edits), splicing from `other` at times.
    pub fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        let edits = self.rng.random_range(1..=4);
        for _ in 0..edits {
            self.edit(&mut out, other);
        }
        out
    }

    /// Arbitrary bytes, up to `max_len` of them.
    pub fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.rng.random_range(0..=max_len);
        (0..len).map(|_| self.rng.random()).collect()
    }

    fn edit(&mut self, out: &mut Vec<u8>, other: &[u8]) {
        const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, 8, 16];
        let len = out.len();
        match self.rng.random_range(0..8) {
            0 | 1 if len > 0 => {
                let at = self.rng.random_range(0..len);
                out[at] ^= 1 << self.rng.random_range(0..8);
            }
            2 if len > 0 => {
                let at = self.rng.random_range(0..len);
                out[at] = INTERESTING[self.rng.random_range(0..INTERESTING.len())];
            }
            3 if len > 0 => {
                // A little-endian length or offset field set to an edge value.
                let at = self.rng.random_range(0..len);
                let value: u64 = match self.rng.random_range(0..4) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => u64::from(u32::MAX),
                    _ => self.rng.random_range(0..4096),
                };
                let width = self.rng.random_range(1..=8).min(len - at);
                out[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            4 => out.truncate(self.rng.random_range(0..=len)),
            5 => {
                let at = self.rng.random_range(0..=len);
                let n = self.rng.random_range(1..=16);
                let fill: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                out.splice(at..at, fill);
            }
            6 if len > 0 => {
                let from = self.rng.random_range(0..len);
                let to = self.rng.random_range(from..=len.min(from + 64));
                out.drain(from..to);
            }
            _ if !other.is_empty() => {
                // Splice: a prefix of this input, then a piece of the other.
                let keep = self.rng.random_range(0..=len);
                let from = self.rng.random_range(0..other.len());
                let to = self.rng.random_range(from..=other.len());
                out.truncate(keep);
                out.extend_from_slice(&other[from..to]);
            }
            _ => out.push(self.rng.random()),
        }
    }
}

/// The frames and the error a whole stream holds, read the plain way: what [`FrameDecoder`]
/// must give whatever pieces the stream arrives in.
struct Expected {
    frames: Vec<(u64, Vec<u8>)>,
    error: Option<WireError>,
}

fn reference_frames(stream: &[u8], max: usize) -> Expected {
    let mut frames = Vec::new();
    let mut rest = stream;
    while let Some((len_bytes, after)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len_bytes) as usize;
        if len > max {
            return Expected {
                frames,
                error: Some(WireError::FrameTooLarge { len, max }),
            };
        }
        if len < 8 {
            return Expected {
                frames,
                error: Some(WireError::FrameTooShort { len }),
            };
        }
        let Some((body, next)) = after.split_at_checked(len) else {
            break;
        };
        let (id, payload) = body.split_at(8);
        let id = u64::from_le_bytes(id.try_into().expect("eight bytes"));
        frames.push((id, payload.to_vec()));
        rest = next;
    }
    Expected {
        frames,
        error: None,
    }
}

/// A payload the decoder returns is validated in place, so it must be aligned enough for any
/// archive: if a copy in an aligned buffer validates as a request, the payload itself must.
fn check_payload_alignment(payload: &[u8]) {
    let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
    aligned.extend_from_slice(payload);
    if wire::access_request(&aligned).is_ok() {
        assert!(
            wire::access_request(payload).is_ok(),
            "a valid archive fails validation in the decoder's buffer (misaligned)"
        );
    }
}

/// A snapshot of a compressed payload declaring `declared` bytes uncompressed, with a correct
/// checksum: how a fuzzer (or a regression seed) gets past the checksum.
pub fn frame_snapshot(declared: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(snapshot::HEADER_LEN + payload.len());
    out.extend_from_slice(&snapshot::MAGIC);
    out.extend_from_slice(&snapshot::FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&declared.to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of the one frame in `frame`, checked to carry `id`, in an aligned buffer.
fn reframe(frame: &[u8], id: u64) -> AlignedVec<16> {
    let mut decoder = FrameDecoder::new(wire::DEFAULT_MAX_FRAME_BYTES);
    decoder.push(frame);
    match decoder.next_frame() {
        Ok(Some((got, payload))) => {
            assert_eq!(got, id, "the frame's id");
            let mut aligned = AlignedVec::<16>::with_capacity(payload.len());
            aligned.extend_from_slice(payload);
            aligned
        }
        other => panic!("an encoded message does not frame: {other:?}"),
    }
}
