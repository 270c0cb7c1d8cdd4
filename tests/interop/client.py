"""An agency client written with another toolchain: Python grpcio, with
stubs generated here from proto/ by grpcio-tools, against a running
`fugo serve` whose certificates openssl made.

Driven by tests/interop.rs, which starts the server and passes:

    client.py ADDR CERT_DIR NUMBER NUMBER

CERT_DIR holds ca.pem and NAME.pem / NAME.key for the agencies mhlw,
city-shinjuku, hellowork-shinjuku and jps (which the test's policy lets
suspend a person). Every check prints one line "ok: ..."; the first failed check
raises, so the exit status is the verdict. Nothing printed carries a number
or a code.

The audit checks (fugo.v1.Audit) verify the log with code written here from
the specifications, not from fugo's: the C2SP signed note and its Ed25519
signature (with `cryptography`), and the RFC 9162 §2.1.4.2 consistency proof.
"""

import base64
import hashlib
import pathlib
import sys
import tempfile
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import grpc
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[2]
INVALID_ARGUMENT = 3


def generate_stubs(out):
    """Compiles proto/ with grpcio-tools' protoc into `out`."""
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    status = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'proto'}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            # Every service fugo publishes, so a new one is compiled here too.
            *sorted(str(p) for p in (ROOT / "proto/fugo/v1").glob("*.proto")),
            str(ROOT / "proto/google/rpc/code.proto"),
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    status = protoc.main(
        [
            "protoc",
            f"-I{ROOT / 'tests/interop'}",
            f"-I{include}",
            f"--python_out={out}",
            str(ROOT / "tests/interop/google/rpc/status_details.proto"),
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    sys.path.insert(0, str(out))


def channel(addr, certs, agency):
    """A mutual-TLS channel as `agency` (None: no client certificate)."""
    ca = (certs / "ca.pem").read_bytes()
    if agency is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(certs / f"{agency}.key").read_bytes(),
            certificate_chain=(certs / f"{agency}.pem").read_bytes(),
        )
    return grpc.secure_channel(addr, credentials)


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def open_note(note, verifier_key):
    """Checks a C2SP signed note against a verifier key
    `<name>+<key id hex>+<base64(0x01 || Ed25519 key)>` and returns the
    checkpoint's (origin, size, root hash); raises if anything is off."""
    name, key_id, key = verifier_key.split("+", 2)
    key = base64.b64decode(key, validate=True)
    if key[0] != 0x01 or len(key) != 33:
        raise ValueError("not an Ed25519 verifier key")
    expected_id = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
    if expected_id.hex() != key_id:
        raise ValueError("key id does not match the key")
    body, _, signatures = note.rpartition("\n\n")
    body += "\n"
    public = Ed25519PublicKey.from_public_bytes(key[1:])
    verified = False
    for line in signatures.splitlines():
        dash, signer, blob = line.split(" ")
        blob = base64.b64decode(blob, validate=True)
        if dash == "\u2014" and signer == name and blob[:4] == expected_id:
            public.verify(blob[4:], body.encode())  # raises when forged
            verified = True
    if not verified:
        raise ValueError("no signature by the log's key")
    origin, size, root = body.splitlines()[:3]
    if origin != name:
        raise ValueError("the checkpoint names another log")
    return origin, int(size), base64.b64decode(root, validate=True)


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def consistent(old_size, new_size, old_root, new_root, proof):
    """RFC 9162 §2.1.4.2: is the tree (old_size, old_root) a prefix of the
    tree (new_size, new_root), by `proof`?"""
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0 or old_size > new_size or not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node(c, fr)
            sr = node(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


def latest_checkpoint(audit, messages, above=0):
    """The latest checkpoint once its size exceeds `above` (5 s at most)."""
    deadline = time.monotonic() + 5
    while True:
        answer = audit.GetCheckpoint(messages.GetCheckpointRequest(), timeout=10)
        if answer.checkpoint:
            opened = open_note(answer.checkpoint, answer.verifier_key)
            if opened[1] > above:
                return answer.verifier_key, opened
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint above size {above} within 5 s")
        time.sleep(0.1)


def main():
    addr, certs, numbers = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:5]
    with tempfile.TemporaryDirectory() as out:
        generate_stubs(out)
        from fugo.v1 import codes_pb2 as pb
        from fugo.v1 import codes_pb2_grpc as rpc
        from fugo.v1 import audit_pb2 as audit_pb
        from fugo.v1 import audit_pb2_grpc as audit_rpc

        mhlw = rpc.CodesStub(channel(addr, certs, "mhlw"))
        shinjuku = rpc.CodesStub(channel(addr, certs, "city-shinjuku"))
        audit = audit_rpc.AuditStub(channel(addr, certs, "mhlw"))
        verifier_key, (_, old_size, old_root) = latest_checkpoint(audit, audit_pb)
        check(old_size >= 1, "the log's signed checkpoint verifies with its published key")

        derived, call = mhlw.Derive.with_call(
            pb.DeriveRequest(numbers=[numbers[0], "12345", numbers[1]]), timeout=10
        )
        named = dict(call.initial_metadata()).get("x-fugo-checkpoint")
        check(
            named is not None and open_note(base64.b64decode(named).decode(), verifier_key)[1] >= old_size,
            "a response names a signed checkpoint (x-fugo-checkpoint)",
        )
        kinds = [r.WhichOneof("result") for r in derived.results]
        check(kinds == ["code", "error", "code"], "derive answers per item, in order")
        error = derived.results[1].error
        check(
            (error.index, error.code) == (1, INVALID_ARGUMENT) and "12345" not in error.reason,
            "a bad item names its index and reason, not its value",
        )
        check(len(derived.policy_version) == 64, "every response names the policy version")
        mhlw_codes = [derived.results[0].code, derived.results[2].code]

        own = shinjuku.Derive(pb.DeriveRequest(numbers=numbers), timeout=10)
        shinjuku_codes = [r.code for r in own.results]
        check(
            all(len(c) == 29 for c in shinjuku_codes) and shinjuku_codes != mhlw_codes,
            "two agencies get different codes for the same people",
        )

        sealed = mhlw.Seal(
            pb.SealRequest(
                provider="city-shinjuku",
                affair="health-insurance-benefit",
                items=["local-tax"],
                codes=mhlw_codes,
            ),
            timeout=10,
        )
        tokens = [r.sealed.token for r in sealed.results]
        check(all(len(t) > 0 for t in tokens), "seal gives a token per code")

        redeemed = shinjuku.Redeem(pb.RedeemRequest(tokens=tokens), timeout=10)
        check(
            [r.redeemed.code for r in redeemed.results] == shinjuku_codes,
            "redeem turns MHLW's tokens into Shinjuku's own codes",
        )
        context = redeemed.contexts[redeemed.results[0].redeemed.context]
        check(
            (context.requester, context.affair, list(context.items))
            == ("mhlw", "health-insurance-benefit", ["local-tax"]),
            "the provider learns who asked, under which affair, for what",
        )

        replies = list(
            shinjuku.DeriveStream(
                iter([pb.DeriveRequest(numbers=numbers[:1]), pb.DeriveRequest(numbers=numbers[1:])]),
                timeout=10,
            )
        )
        check(
            [r.results[0].code for r in replies] == shinjuku_codes,
            "a stream answers one response per batch, in order",
        )

        try:
            mhlw.Reidentify(pb.ReidentifyRequest(codes=mhlw_codes), timeout=10)
            check(False, "reidentify without the capability is refused")
        except grpc.RpcError as refused:
            check(
                refused.code() == grpc.StatusCode.PERMISSION_DENIED,
                "reidentify without the capability is refused",
            )

        anonymous = rpc.CodesStub(channel(addr, certs, None))
        try:
            anonymous.Derive(pb.DeriveRequest(numbers=numbers[:1]), timeout=10)
            check(False, "a call without a client certificate is refused")
        except grpc.RpcError as refused:
            check(
                refused.code() == grpc.StatusCode.UNAVAILABLE,
                "a call without a client certificate is refused in the handshake (UNAVAILABLE)",
            )

        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel(addr, certs, "mhlw"))
        answers = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = [s.name for a in answers for s in a.list_services_response.service]
        check("fugo.v1.Codes" in names, "grpcio's reflection client (v1alpha) lists fugo.v1.Codes")

        # The log grew with the calls above; the newer checkpoint must
        # extend the one seen first.
        _, (_, new_size, new_root) = latest_checkpoint(audit, audit_pb, above=old_size)
        answer = audit.GetConsistencyProof(
            audit_pb.GetConsistencyProofRequest(old_size=old_size, new_size=new_size), timeout=10
        )
        proof = list(answer.proof)
        check(
            open_note(answer.checkpoint, verifier_key)[1:] == (new_size, new_root)
            and consistent(old_size, new_size, old_root, new_root, proof),
            "a consistency proof from the first checkpoint to a later one verifies (RFC 9162, in Python)",
        )
        forged = bytearray(old_root)
        forged[0] ^= 1
        check(
            not consistent(old_size, new_size, bytes(forged), new_root, proof),
            "the same proof fails for a root the log never had",
        )

        copy = []
        token = ""
        for _ in range(100):
            page = audit.ReadCopy(audit_pb.ReadCopyRequest(page_size=5, page_token=token), timeout=10)
            copy.extend(page.records)
            token = page.next_page_token
            if not token:
                break
        derives = sorted(r.code for r in copy if r.operation == "derive")
        seals = [r for r in copy if r.operation == "seal"]
        redeems = [r for r in copy if r.operation == "redeem"]
        check(
            derives == sorted(mhlw_codes)
            and sorted(r.code for r in seals) == sorted(mhlw_codes)
            and sorted(r.code for r in redeems) == sorted(mhlw_codes)
            and all(r.other_agency == "city-shinjuku" and r.batch_id == "" for r in redeems),
            "MHLW's copy holds its derives, seals and Shinjuku's redeems, with MHLW's own codes",
        )

        # Key epochs (docs/SPEC.md §11): Shinjuku is on epoch 2 and still
        # accepts epoch 1. Codes of epoch 1, asked for by name, rekey into
        # the epoch-2 codes derive gives.
        old_epoch = shinjuku.Derive(pb.DeriveRequest(numbers=numbers, epoch=1), timeout=10)
        old_codes = [r.code for r in old_epoch.results]
        check(
            all(len(c) == 29 for c in old_codes) and old_codes != shinjuku_codes,
            "derive makes codes of an accepted epoch when asked by name (DeriveRequest.epoch)",
        )
        rekeyed = shinjuku.Rekey(pb.RekeyRequest(codes=old_codes), timeout=10)
        check(
            [(r.rekeyed.old_code, r.rekeyed.new_code) for r in rekeyed.results]
            == list(zip(old_codes, shinjuku_codes)),
            "rekey turns epoch-1 codes into the current epoch's, as (old, new) pairs",
        )

        # Suspension (fugo.v1.Persons): the Japan Pension Service may
        # suspend; seal then answers a generic "person unavailable", and
        # only a holder of `suspend` reads the reason.
        from fugo.v1 import persons_pb2 as persons_pb
        from fugo.v1 import persons_pb2_grpc as persons_rpc

        jps = persons_rpc.PersonsStub(channel(addr, certs, "jps"))
        jps.Suspend(
            persons_pb.SuspendRequest(
                number=numbers[1], reason=persons_pb.SUSPENSION_REASON_FRAUD_HOLD
            ),
            timeout=10,
        )
        refused = mhlw.Seal(
            pb.SealRequest(
                provider="city-shinjuku",
                affair="health-insurance-benefit",
                items=["local-tax"],
                codes=mhlw_codes,
            ),
            timeout=10,
        )
        kinds = [r.WhichOneof("result") for r in refused.results]
        reason = refused.results[1].error.reason
        check(
            kinds == ["sealed", "error"]
            and refused.results[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            and "unavailable" in reason
            and "fraud" not in reason.lower(),
            "seal for a suspended person answers a generic 'person unavailable'",
        )
        try:
            persons_rpc.PersonsStub(channel(addr, certs, "mhlw")).GetStatus(
                persons_pb.GetStatusRequest(number=numbers[1]), timeout=10
            )
            check(False, "an agency without suspend or reissue cannot read a suspension")
        except grpc.RpcError as denied:
            check(
                denied.code() == grpc.StatusCode.PERMISSION_DENIED,
                "an agency without suspend or reissue cannot read a suspension",
            )
        status = jps.GetStatus(persons_pb.GetStatusRequest(number=numbers[1]), timeout=10)
        check(
            status.suspension == persons_pb.SUSPENSION_REASON_FRAUD_HOLD
            and status.suspended_since_ms > 0,
            "the suspending agency reads the reason",
        )
        jps.Lift(persons_pb.LiftRequest(number=numbers[1]), timeout=10)
        lifted = mhlw.Seal(
            pb.SealRequest(
                provider="city-shinjuku",
                affair="health-insurance-benefit",
                items=["local-tax"],
                codes=mhlw_codes,
            ),
            timeout=10,
        )
        check(
            [r.WhichOneof("result") for r in lifted.results] == ["sealed", "sealed"],
            "seal works again once the suspension is lifted",
        )

        # Quotas: Hello Work's policy entry allows 2 derives at once, 1 a
        # second; the third is refused with a RetryInfo delay (D124).
        from google.rpc import status_details_pb2 as rpc_status

        hellowork = rpc.CodesStub(channel(addr, certs, "hellowork-shinjuku"))
        hellowork.Derive(pb.DeriveRequest(numbers=numbers), timeout=10)
        try:
            hellowork.Derive(pb.DeriveRequest(numbers=numbers[:1]), timeout=10)
            raise AssertionError("a derive over the quota passed")
        except grpc.RpcError as refused:
            details = dict(refused.trailing_metadata()).get("grpc-status-details-bin")
            status = rpc_status.Status.FromString(details)
            delays = []
            for detail in status.details:
                if detail.Is(rpc_status.RetryInfo.DESCRIPTOR):
                    info = rpc_status.RetryInfo()
                    detail.Unpack(info)
                    delays.append(info.retry_delay.ToTimedelta().total_seconds())
            check(
                refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                and status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
                and len(delays) == 1
                and 0 < delays[0] <= 1.1,
                "a call over the quota gets RESOURCE_EXHAUSTED with a google.rpc.RetryInfo delay",
            )
        time.sleep(delays[0])
        again = hellowork.Derive(pb.DeriveRequest(numbers=numbers[:1]), timeout=10)
        check(len(again.results) == 1, "the call passes after the RetryInfo delay")


if __name__ == "__main__":
    main()
