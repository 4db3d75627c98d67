locals {
  name = "${var.project}-${var.environment}"
  # IAM name prefixes may be 38 characters at most
  iam_prefix = "${substr(local.name, 0, 28)}-gpu-"

  # The stacklock tags: live inventory and the drift audit find the nodes by these.
  stacklock_tags = {
    "project"     = var.project
    "environment" = var.environment
    "stack"       = var.stack_name
    "fingerprint" = var.fingerprint
    "managed-by"  = "stacklock"
  }
  tags = merge(var.tags, local.stacklock_tags)

  vpc_id = var.vpc_id != null ? var.vpc_id : data.aws_vpc.default[0].id
}

data "aws_partition" "current" {}

data "aws_vpc" "default" {
  count = var.vpc_id == null ? 1 : 0

  default = true
}

################################################################################
# Security group: SSH from the admins, inference from the clients, nothing else
################################################################################

resource "aws_security_group" "this" {
  name_prefix = "${local.name}-gpu-node-"
  description = "stacklock GPU nodes of ${local.name}: SSH from admin CIDRs, TorchServe inference from client CIDRs"
  vpc_id      = local.vpc_id

  tags = merge(local.tags, { "Name" = "${local.name}-gpu-node" })

  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = length(var.subnet_ids) == 0 || var.vpc_id != null
      error_message = "subnet_ids need vpc_id: the security group must live in the subnets' VPC."
    }
  }
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = toset(var.admin_cidrs)

  security_group_id = aws_security_group.this.id
  description       = "SSH from admin CIDR ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22

  tags = local.tags
}

# Without the endpoint (endpoint.tf) clients reach the nodes directly; with it, only the load
# balancer does, and this rule is empty.
resource "aws_vpc_security_group_ingress_rule" "inference" {
  for_each = var.endpoint_enabled ? toset([]) : toset(var.client_cidrs)

  security_group_id = aws_security_group.this.id
  description       = "TorchServe inference API from client CIDR ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.inference_port
  to_port           = var.inference_port

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = toset(var.egress_cidrs)

  security_group_id = aws_security_group.this.id
  description       = "HTTPS to package repositories, PyPI and SSM endpoints"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443

  tags = local.tags
}

resource "aws_vpc_security_group_egress_rule" "http" {
  for_each = toset(var.egress_cidrs)

  security_group_id = aws_security_group.this.id
  description       = "HTTP to apt repositories (their metadata is signed)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80

  tags = local.tags
}

################################################################################
# Instance profile: only what SSM needs
################################################################################

data "aws_iam_policy_document" "assume_role" {
  statement {
    sid     = "EC2AssumeRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  name_prefix        = local.iam_prefix
  description        = "stacklock GPU nodes of ${local.name}: Systems Manager access only"
  assume_role_policy = data.aws_iam_policy_document.assume_role.json

  tags = local.tags
}

resource "aws_iam_role_policy_attachment" "ssm" {
  role       = aws_iam_role.this.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "this" {
  name_prefix = local.iam_prefix
  role        = aws_iam_role.this.name

  tags = local.tags
}

################################################################################
# GPU nodes: identical launch settings in every environment
################################################################################

resource "aws_instance" "this" {
  #checkov:skip=CKV_AWS_88:a public address exists only when the manifest sets access to public; SSH is then open to admin_cidrs alone and inference to client_cidrs alone
  count = var.instance_count

  ami           = var.ami_id
  instance_type = var.instance_type
  key_name      = var.key_name

  subnet_id                   = length(var.subnet_ids) > 0 ? var.subnet_ids[count.index % length(var.subnet_ids)] : null
  availability_zone           = length(var.subnet_ids) == 0 && length(var.availability_zones) > 0 ? var.availability_zones[count.index % length(var.availability_zones)] : null
  vpc_security_group_ids      = [aws_security_group.this.id]
  associate_public_ip_address = var.access == "public"
  iam_instance_profile        = aws_iam_instance_profile.this.name

  ebs_optimized = true
  monitoring    = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 2 # containers on the node need the IMDSv2 token too
    instance_metadata_tags      = "enabled"
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size
    encrypted             = true
    delete_on_termination = true

    tags = merge(local.tags, { "Name" = "${local.name}-${count.index + 1}-root" })
  }

  tags = merge(local.tags, { "Name" = "${local.name}-${count.index + 1}" })

  # A replaced node (new AMI, other instance type) is created before the old one is
  # destroyed; stacklock applies such replacements one batch at a time (-target per batch),
  # so an environment never loses more than a batch of serving capacity. Nothing unique is
  # attached to an instance (no ENI, EIP or volume attachment; the Name tag may repeat), so
  # old and new can coexist.
  lifecycle {
    create_before_destroy = true
  }
}
