"""twistd plugin options (placeholder until the service tree lands)."""
from twisted.python import usage
from twisted.application import service
class Options(usage.Options):
    pass
def makeService(options):
    return service.MultiService()
