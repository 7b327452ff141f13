"""Starting, watching, restarting and stopping bastion's processes, wherever the ranks run."""
