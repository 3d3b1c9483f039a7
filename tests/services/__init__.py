"""The services beside the hub: meter, course scheduler, verification."""
