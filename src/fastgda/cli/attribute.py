"""``fastgda attribute``: the training images that most influenced a generated image, in milliseconds."""

from __future__ import annotations

from ._common import COUNT, add_compute_flags, add_json_flag, compute_from_args, emit, set_threads


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "attribute",
        help="attribute a generated image to training images",
        description="Rank training images by influence on a generated image and its prompt.",
    )
    parser.add_argument(
        "--attributor", required=True, help="folder from `fastgda attributor build`"
    )
    parser.add_argument("--image", required=True, help="the generated image (PNG, JPEG, ...)")
    parser.add_argument("--prompt", required=True, help="the prompt that generated it")
    parser.add_argument("-k", type=COUNT, default=10, help="how many training images (default 10)")
    parser.add_argument(
        "--html", help="also write a page showing the query beside its top-k images"
    )
    add_compute_flags(parser, "query encoders")
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=["torch", "onnx", "auto"],
        help="the query encoders' runtime: "
        "torch (the reference), onnx (ONNX Runtime, CPU float32), auto (onnx where it can run)",
    )
    parser.add_argument("--threads", type=COUNT)
    add_json_flag(parser)
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    import time
    from dataclasses import asdict
    from pathlib import Path

    from ..attributor import Attributor, load_query_image
    from ..errors import FastGDAError
    from ..pipeline.html import attribution_html

    set_threads(args.threads)
    if not args.prompt.strip():
        raise FastGDAError("--prompt is empty; pass the prompt that generated the image")
    device, dtype = compute_from_args(args)
    attributor = Attributor.load(args.attributor, device, dtype, args.runtime)
    image = load_query_image(args.image)
    began = time.perf_counter()
    results = attributor.attribute(image, args.prompt, args.k)[0]
    seconds = time.perf_counter() - began
    if args.html:
        page = attribution_html(image, args.prompt, results, attributor.thumbnails(results))
        Path(args.html).write_text(page, encoding="utf-8")
    payload = {"prompt": args.prompt, "seconds": seconds, "results": [asdict(a) for a in results]}
    lines = [f"top {len(results)} training images for {args.prompt!r} ({1000 * seconds:.1f} ms):"]
    lines += [
        f"{r:3d}. id {a.id:6d}  score {a.score:.3f}  share {100 * a.share:5.1f}%  {a.captions[0] if a.captions else ''}"
        for r, a in enumerate(results, start=1)
    ]
    emit(args, payload, "\n".join(lines))
    return 0
