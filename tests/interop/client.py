"""An agency client written with another toolchain: Python grpcio, with
stubs generated here from proto/ by grpcio-tools, against a running
`fugo serve` whose certificates openssl made.

Driven by tests/interop.rs, which starts the server and passes:

    client.py ADDR CERT_DIR NUMBER NUMBER

CERT_DIR holds ca.pem and NAME.pem / NAME.key for the agencies mhlw and
city-shinjuku. Every check prints one line "ok: ..."; the first failed check
raises, so the exit status is the verdict. Nothing printed carries a number
or a code.
"""

import pathlib
import sys
import tempfile

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
            str(ROOT / "proto/fugo/v1/codes.proto"),
            str(ROOT / "proto/google/rpc/code.proto"),
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


def main():
    addr, certs, numbers = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:5]
    with tempfile.TemporaryDirectory() as out:
        generate_stubs(out)
        from fugo.v1 import codes_pb2 as pb
        from fugo.v1 import codes_pb2_grpc as rpc

        mhlw = rpc.CodesStub(channel(addr, certs, "mhlw"))
        shinjuku = rpc.CodesStub(channel(addr, certs, "city-shinjuku"))

        derived = mhlw.Derive(pb.DeriveRequest(numbers=[numbers[0], "12345", numbers[1]]), timeout=10)
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


if __name__ == "__main__":
    main()
