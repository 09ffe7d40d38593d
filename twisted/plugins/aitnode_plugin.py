from twisted.application.service import ServiceMaker

aitnode = ServiceMaker(
    "aitnode",
    "aitnode.tap",
    "A proof-of-authority node for the compute-backed AIT chain.",
    "aitnode",
)
