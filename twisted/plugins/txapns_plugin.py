from twisted.application.service import ServiceMaker

apns = ServiceMaker(
    "txapns",
    "txapns.tap",
    "Apple Push Notification provider service (binary and HTTP/2)",
    "apns",
)
