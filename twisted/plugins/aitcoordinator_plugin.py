from twisted.application.service import ServiceMaker

aitcoordinator = ServiceMaker(
    "aitcoordinator",
    "aitnode.coordinator_tap",
    "A mock compute coordinator that signs receipt attestations (devnet).",
    "aitcoordinator",
)
