"""``fastgda import-release``: the official FastGDA release's features and teacher rankings as fastgda artifacts."""

from __future__ import annotations

from ._common import add_json_flag, emit


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "import-release",
        help="import the official release's features and rankings",
        description="Read the release's data/coco/feats/<spec>/ (data_feats.npy, train_query_feats.npy, "
        "test_query_feats.npy) and influence_train.pkl / influence_test.pkl (through a restricted unpickler that "
        "rebuilds only arrays and plain containers) into OUT/features/<spec>/{items,q-train,q-test} and "
        "OUT/ground_truth/{train,test}, ready for `ranker train` and `eval map`.",
    )
    parser.add_argument("release", help="the release folder (holding data/coco/feats/...)")
    parser.add_argument("--out", required=True, help="folder for the imported artifacts")
    parser.add_argument(
        "--selection", help="candidate selection to read from the ranking pickles (default: random)"
    )
    add_json_flag(parser)
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from ..interop import import_release

    written = import_release(args.release, args.out, args.selection)
    lines = [
        f"{kind} {name}: {shapes}"
        for kind, entry in written.items()
        for name, shapes in entry.items()
    ]
    emit(args, written, "\n".join([f"imported into {args.out}:", *lines]))
    return 0
