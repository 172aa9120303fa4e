from twisted.application.service import ServiceMaker

qmail = ServiceMaker("qmailtx", "qmailtx.tap", "qmail's mail system in one Twisted process", "qmail")
