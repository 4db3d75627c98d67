output "hosts" {
  description = "The nodes by Name tag: instance id, addresses, zone, AMI and type; `address` is the one the controller connects to (public IP for public access, private IP for bastion, instance id for SSM)."
  value = {
    for i in aws_instance.this : i.tags["Name"] => {
      instance_id       = i.id
      address           = var.access == "public" ? i.public_ip : (var.access == "bastion" ? i.private_ip : i.id)
      public_ip         = i.public_ip
      private_ip        = i.private_ip
      availability_zone = i.availability_zone
      ami               = i.ami
      instance_type     = i.instance_type
    }
  }
}

output "instance_ids" {
  description = "Ids of the GPU nodes, in creation order."
  value       = aws_instance.this[*].id
}

output "ami_id" {
  description = "The pinned AMI id the nodes were launched from."
  value       = var.ami_id
}

output "instance_type" {
  description = "The instance type of every node."
  value       = var.instance_type
}

output "security_group_id" {
  description = "Id of the nodes' security group."
  value       = aws_security_group.this.id
}

output "iam_role_arn" {
  description = "ARN of the nodes' IAM role (AmazonSSMManagedInstanceCore only)."
  value       = aws_iam_role.this.arn
}

output "instance_profile_name" {
  description = "Name of the nodes' instance profile."
  value       = aws_iam_instance_profile.this.name
}

output "tags" {
  description = "The stacklock tags every resource carries."
  value       = local.stacklock_tags
}

output "endpoint_dns_name" {
  description = "DNS name of the environment's load balancer (clients use https://<this>:endpoint_port, or a CNAME / Route 53 alias of the certificate's name to it); null without the endpoint."
  value       = one(aws_lb.endpoint[*].dns_name)
}

output "endpoint_zone_id" {
  description = "Route 53 hosted zone id of the load balancer, for an alias record; null without the endpoint."
  value       = one(aws_lb.endpoint[*].zone_id)
}

output "endpoint_security_group_id" {
  description = "Id of the load balancer's security group; null without the endpoint."
  value       = one(aws_security_group.endpoint[*].id)
}

output "endpoint_target_group_arn" {
  description = "ARN of the target group holding every node (its health shows which nodes serve); null without the endpoint."
  value       = one(aws_lb_target_group.endpoint[*].arn)
}

output "endpoint_access_logs_bucket" {
  description = "S3 bucket holding the endpoint's access logs (under endpoint/AWSLogs/); null without the endpoint."
  value       = one(aws_s3_bucket.endpoint_logs[*].id)
}

output "ecr_repository_url" {
  description = "URL of the environment's serving image repository (ACCOUNT.dkr.ecr.REGION.amazonaws.com/<project>/<environment>/serving); its host is the --registry of `stacklock image push ENV`. Null unless ecr_enabled."
  value       = one(aws_ecr_repository.serving[*].repository_url)
}

output "ecr_repository_arn" {
  description = "ARN of the serving image repository (the nodes' role may pull from it alone); null unless ecr_enabled."
  value       = one(aws_ecr_repository.serving[*].arn)
}
