"""The benchmark harness behind ``gwcore bench``, shipped with the package.

``services`` starts what is measured (the mock upstream, gwcore, nginx, LiteLLM proxy, the Python
floor, a gateway given as a URL) pinned to one core; ``loadgen`` drives and checks the load from
the other core and accounts CPU, memory and upstream connections from ``/proc`` (``procstat``);
``runner`` interleaves the rounds; ``report`` writes report.md, results.json and chart.png. The
scripts in the repository's ``bench/`` import from here; this package never imports from
``bench/`` (it is not installed). Linux only; loopback only.
"""
