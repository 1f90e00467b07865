"""``reconciler demo``: the incidents of DESIGN.md, staged and healed live.

* :mod:`ops.demo.stage` -- the conversations table, healthy conversations and the incidents;
* :mod:`ops.demo.traffic` -- live traffic and a gateway that holds sessions and drains queues;
* :mod:`ops.demo.show` -- the live view of the audit stream and the summary.
"""
