"""The one import switch for the SSE scanner: the compiled ``gwcore._sse`` or its pure-Python twin.

Everything else imports ``EventParser``, ``StreamObserver``, ``SSEError``, the quick head
parsers and ``usage_counts`` from here, never from
``gwcore._sse`` or ``gwcore._sse_py`` directly (tests excepted: they compare the two).
``GWCORE_NO_EXTENSIONS=1`` forces the twin at import time; a missing compiled module falls back to
the twin silently, and ``IMPLEMENTATION`` says which one is in use ("cython" or "python"). This
module must never do more than choose: no wrappers, so the hot path pays nothing for the switch.
"""

from __future__ import annotations

import os

if os.environ.get("GWCORE_NO_EXTENSIONS"):
    from gwcore._sse_py import (
        EventParser,
        RelayPump,
        RequestHeadMemo,
        ResponseHead,
        SSEError,
        StreamObserver,
        bytes_tail,
        chat_request_fields,
        head_end,
        lane_available,
        lane_scan,
        printable_ascii,
        quick_request_head,
        quick_response_head,
        request_bytes,
        response_head,
        send_direct,
        usage_counts,
        with_member,
    )

    IMPLEMENTATION = "python"
else:
    try:
        from gwcore._sse import (
            EventParser,
            RelayPump,
            RequestHeadMemo,
            ResponseHead,
            SSEError,
            StreamObserver,
            bytes_tail,
            chat_request_fields,
            head_end,
            lane_available,
            lane_scan,
            printable_ascii,
            quick_request_head,
            quick_response_head,
            request_bytes,
            response_head,
            send_direct,
            usage_counts,
            with_member,
        )

        IMPLEMENTATION = "cython"
    except ImportError:  # no compiler at install time: the twin keeps the package working
        from gwcore._sse_py import (
            EventParser,
            RelayPump,
            RequestHeadMemo,
            ResponseHead,
            SSEError,
            StreamObserver,
            bytes_tail,
            chat_request_fields,
            head_end,
            lane_available,
            lane_scan,
            printable_ascii,
            quick_request_head,
            quick_response_head,
            request_bytes,
            response_head,
            send_direct,
            usage_counts,
            with_member,
        )

        IMPLEMENTATION = "python"

__all__ = [
    "IMPLEMENTATION",
    "EventParser",
    "RelayPump",
    "RequestHeadMemo",
    "ResponseHead",
    "SSEError",
    "StreamObserver",
    "bytes_tail",
    "chat_request_fields",
    "head_end",
    "lane_available",
    "lane_scan",
    "printable_ascii",
    "quick_request_head",
    "quick_response_head",
    "request_bytes",
    "response_head",
    "send_direct",
    "usage_counts",
    "with_member",
]
