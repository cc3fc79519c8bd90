"""``fastgda attribute``: the training images that most influenced a generated image, in milliseconds."""

from __future__ import annotations

from ._common import COUNT, add_json_flag, emit, set_threads


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
    parser.add_argument("--threads", type=COUNT)
    add_json_flag(parser)
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    import time
    from dataclasses import asdict
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from ..attributor import Attributor, _load_query_image
    from ..errors import FastGDAError
    from ..visual import attribution_html

    set_threads(args.threads)
    if not args.prompt.strip():
        raise FastGDAError("--prompt is empty; pass the prompt that generated the image")
    attributor = Attributor.load(args.attributor)
    image = _load_query_image(args.image)
    began = time.perf_counter()
    results = attributor.attribute(image, args.prompt, args.k)
    seconds = time.perf_counter() - began
    if args.html:
        thumbs = []
        for a in results:
            try:
                with Image.open(a.image) as im:
                    thumbs.append(np.asarray(im.convert("RGB")))
            except OSError:
                thumbs.append(
                    np.zeros((16, 16, 3), np.uint8)
                )  # image moved: show a blank tile, keep the row
        Path(args.html).write_text(
            attribution_html(image, args.prompt, results, thumbs), encoding="utf-8"
        )
    payload = {"prompt": args.prompt, "seconds": seconds, "results": [asdict(a) for a in results]}
    lines = [f"top {len(results)} training images for {args.prompt!r} ({1000 * seconds:.1f} ms):"]
    lines += [
        f"{r:3d}. id {a.id:6d}  score {a.score:.3f}  share {100 * a.share:5.1f}%  {a.captions[0] if a.captions else ''}"
        for r, a in enumerate(results, start=1)
    ]
    emit(args, payload, "\n".join(lines))
    return 0
